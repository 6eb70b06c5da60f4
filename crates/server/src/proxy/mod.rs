//! Pull-through caching: remote repositories answer the same questions as
//! local ones, and a miss (or a stale tag) goes to the upstream.
//!
//! A remote repository's content is stored like pushed content, under its
//! canonical name (see [`routes`]), with provenance `mirrored` and the
//! upstream's name as who put it there. Reads are then served by the
//! registry core from the stores; only what is missing or stale is asked of
//! the upstream. Blobs are teed: streamed to the clients while they are
//! written to the store, one fetch per blob however many clients wait
//! ([`fetch`]), one replica fetching when several share the stores.

mod batch;
pub mod config;
pub mod evict;
mod fetch;
pub mod preload;
pub mod routes;
pub mod ssrf;
pub mod upstream;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_meta::{Referrer, StoredManifest};
use berth_oci::headers::ByteRange;
use berth_oci::{Digest, Reference, RepoName};
use futures::StreamExt as _;
use prometheus::IntCounter;

use self::config::{ProxyConfig, RegistryMode};
use self::fetch::{FetchEnd, FetchKey, Fetches};
use self::routes::{Addressing, Remote, Route, Routes, VirtualAddressing};
use self::ssrf::NetworkPolicy;
use self::upstream::{Timeouts, UpstreamClient, UpstreamError};
use crate::clock::Clock;
use crate::registry::{Provenance, Registry, RegistryError};

/// Why a pull through an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Upstream(Arc<UpstreamError>),
    /// A push or delete to a repository this registry only caches.
    #[error("{repo} is a cache of the upstream {upstream}; push to the upstream instead")]
    ReadOnlyRemote { repo: String, upstream: String },
    /// A push or delete to a registry running as a pull-only mirror.
    #[error("this registry is a pull-only mirror: pushes and deletes are refused")]
    MirrorOnly,
    /// A push to a virtual repository without a local member for pushes.
    #[error("{repo} is a virtual repository that takes no pushes")]
    VirtualReadOnly { repo: String },
    /// A preload of a name that no upstream serves.
    #[error("{0} is not the name of an upstream's repository (no configured prefix or host matches)")]
    NotRemote(String),
    /// A preload asked for a platform the index does not list.
    #[error("{image}: the index lists no image for the platform {platform}")]
    NoSuchPlatform { image: String, platform: String },
}

impl From<UpstreamError> for ProxyError {
    fn from(e: UpstreamError) -> Self {
        ProxyError::Upstream(Arc::new(e))
    }
}

pub type Result<T, E = ProxyError> = std::result::Result<T, E>;

/// Why a proxy configuration cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ProxyConfigError {
    #[error(transparent)]
    Upstream(#[from] upstream::UpstreamConfigError),
    #[error("proxy.allowed_networks: {0}")]
    Networks(String),
    #[error("proxy: {0}")]
    Invalid(String),
}

/// Counts of what the cache did, for the admin API and `/metrics`.
#[derive(Debug)]
pub struct ProxyCounters {
    /// Reads answered from the cache without asking an upstream.
    pub hits: IntCounter,
    /// Reads that had to ask an upstream.
    pub misses: IntCounter,
    /// Upstream requests that failed.
    pub upstream_errors: IntCounter,
    /// Cached tags served because their upstream could not be asked.
    pub served_stale: IntCounter,
    /// Blobs fetched from an upstream (one per blob however many clients
    /// wait, and however many replicas share the stores).
    pub blob_fetches: IntCounter,
    /// Bytes of blobs fetched from upstreams.
    pub bytes_fetched: IntCounter,
}

impl Default for ProxyCounters {
    fn default() -> Self {
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        ProxyCounters {
            hits: counter("berth_proxy_hits_total", "Pull-through reads answered from the cache."),
            misses: counter("berth_proxy_misses_total", "Pull-through reads that asked an upstream."),
            upstream_errors: counter("berth_proxy_upstream_errors_total", "Upstream requests that failed."),
            served_stale: counter(
                "berth_proxy_served_stale_total",
                "Cached content served because its upstream could not be asked.",
            ),
            blob_fetches: counter("berth_proxy_blob_fetches_total", "Blobs fetched from upstreams."),
            bytes_fetched: counter(
                "berth_proxy_fetched_bytes_total",
                "Bytes of blobs fetched from upstreams.",
            ),
        }
    }
}

impl ProxyCounters {
    /// The counters, for a metrics registry.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        [
            &self.hits,
            &self.misses,
            &self.upstream_errors,
            &self.served_stale,
            &self.blob_fetches,
            &self.bytes_fetched,
        ]
        .into_iter()
        .map(|c| Box::new(c.clone()) as Box<dyn prometheus::core::Collector>)
        .collect()
    }
}

/// A blob read of a remote repository.
pub enum BlobAnswer {
    /// The blob is in the cache: the registry serves it from the repository.
    Cached(RepoName),
    /// Its size, for a `HEAD` of a blob not cached (nothing is fetched).
    Size(u64),
    /// It is being fetched: the bytes of `range` (or all) as they arrive.
    Streaming {
        size: u64,
        range: Option<std::ops::Range<u64>>,
        body: berth_storage::ByteStream,
        /// The fetch, to wait for the blob to be stored (the body may end first).
        fetch: FetchHandle,
    },
}

/// A blob fetch in flight, as a caller that must know its end sees it.
pub struct FetchHandle(Arc<fetch::Fetch>);

impl FetchHandle {
    /// Waits until the fetch ended; whether the blob was stored.
    pub async fn stored(&self) -> bool {
        self.0.stored().await
    }
}

/// The clients and routes of the configured upstreams: everything of
/// `[proxy]` that can be checked without a registry or a network connection
/// (`berth config check` builds it too).
pub struct Upstreams {
    policy: Arc<NetworkPolicy>,
    timeouts: Timeouts,
    upstreams: Vec<Arc<UpstreamClient>>,
    routes: Routes,
}

impl Upstreams {
    /// Checks `config` and builds the upstreams' clients (reading their
    /// password, certificate and key files) and routes.
    pub fn configured(config: &ProxyConfig) -> Result<Upstreams, ProxyConfigError> {
        let policy = Arc::new(
            NetworkPolicy::new(&config.allowed_networks).map_err(|e| ProxyConfigError::Networks(e.to_string()))?,
        );
        let timeouts = Timeouts {
            connect: Duration::from_secs(config.connect_timeout_secs.max(1)),
            read: Duration::from_secs(config.read_timeout_secs.max(1)),
        };
        let mut addressing = Vec::new();
        let mut upstreams = Vec::new();
        for u in &config.upstreams {
            if u.name.is_empty() {
                return Err(ProxyConfigError::Invalid(
                    "every [[proxy.upstreams]] needs a name".into(),
                ));
            }
            if upstreams.iter().any(|c: &Arc<UpstreamClient>| c.name() == u.name) {
                return Err(ProxyConfigError::Invalid(format!(
                    "upstream {:?} is configured twice",
                    u.name
                )));
            }
            let client = UpstreamClient::configured(u, timeouts, policy.clone())?;
            let host = match &u.host {
                Some(h) => h.to_ascii_lowercase(),
                None => host_of(client.base()),
            };
            let prefix = u.prefix.clone().unwrap_or_else(|| u.name.clone());
            if prefix.parse::<RepoName>().is_err() {
                return Err(ProxyConfigError::Invalid(format!(
                    "upstream {:?}: prefix {prefix:?} is not a repository name",
                    u.name
                )));
            }
            addressing.push(Addressing {
                library_prefix: u.library_prefix.unwrap_or(host == "docker.io"),
                prefix,
                host,
            });
            upstreams.push(Arc::new(client));
        }
        let virtuals: Vec<VirtualAddressing> = config
            .virtuals
            .iter()
            .map(|v| VirtualAddressing {
                name: v.name.clone(),
                members: v.members.clone(),
                push_to: v.push_to.clone(),
            })
            .collect();
        Ok(Upstreams {
            policy,
            timeouts,
            upstreams,
            routes: Routes::new(addressing, virtuals, config.allow_any_upstream),
        })
    }
}

/// How a blob's body was handed on.
enum Pumped {
    /// Every byte, and they match the digest.
    Checked,
    /// The sink wanted no more.
    Stopped,
}

/// Whether the upstream still has the cached manifest at a tag.
struct Unchanged(bool);

/// The pull-through cache and the routes to it.
pub struct Proxy {
    registry: Arc<Registry>,
    routes: Routes,
    /// Configured upstreams, in the order of [`Routes`]' indexes.
    upstreams: Vec<Arc<UpstreamClient>>,
    /// Clients of hosts that only `allow_any_upstream` lets in, made when first asked.
    any_hosts: Mutex<HashMap<String, Arc<UpstreamClient>>>,
    policy: Arc<NetworkPolicy>,
    timeouts: Timeouts,
    fetches: Arc<Fetches>,
    batcher: Arc<batch::Batcher>,
    /// When each cached tag was last confirmed with its upstream (ms). A
    /// cache of this process: a restart only means asking once more.
    confirmed: Mutex<HashMap<(String, String), i64>>,
    freshness_ms: i64,
    offline: bool,
    serve_deleted: bool,
    mirror_only: bool,
    clock: Arc<dyn Clock>,
    pub counters: Arc<ProxyCounters>,
}

impl Proxy {
    /// The cache configured by `config`, over `registry`; spooled blob bytes
    /// go under `spool_dir`.
    pub fn new(
        config: &ProxyConfig,
        mode: RegistryMode,
        registry: Arc<Registry>,
        clock: Arc<dyn Clock>,
        spool_dir: std::path::PathBuf,
    ) -> Result<Proxy, ProxyConfigError> {
        let Upstreams {
            policy,
            timeouts,
            upstreams,
            routes,
        } = Upstreams::configured(config)?;
        Ok(Proxy {
            batcher: Arc::new(batch::Batcher::new(registry.clone())),
            registry,
            routes,
            upstreams,
            any_hosts: Mutex::new(HashMap::new()),
            policy,
            timeouts,
            fetches: Arc::new(Fetches::new(spool_dir)),
            confirmed: Mutex::new(HashMap::new()),
            freshness_ms: i64::try_from(config.freshness_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            offline: config.offline,
            serve_deleted: config.serve_deleted,
            mirror_only: mode == RegistryMode::Mirror,
            clock,
            counters: Arc::new(ProxyCounters::default()),
        })
    }

    /// Where a request for `name` (with containerd's `?ns=`, if given) goes.
    pub fn resolve(&self, name: &RepoName, ns: Option<&str>) -> Route {
        if self.routes.is_empty() {
            return Route::Local(name.clone());
        }
        self.routes.resolve(name, ns)
    }

    /// Whether any name can resolve to something other than a local repository.
    pub fn has_routes(&self) -> bool {
        !self.routes.is_empty()
    }

    /// Whether the registry refuses every push and delete.
    pub fn mirror_only(&self) -> bool {
        self.mirror_only
    }

    /// The configured upstreams: name, URL and host, for the admin API.
    pub fn upstream_names(&self) -> Vec<(String, String)> {
        self.upstreams
            .iter()
            .map(|u| (u.name().to_string(), u.base().to_string()))
            .collect()
    }

    /// Refuses a write (push, delete, upload) to `route` when it is not a
    /// local repository; returns the repository it goes to.
    pub fn writable(&self, route: Route) -> Result<RepoName> {
        if self.mirror_only {
            return Err(ProxyError::MirrorOnly);
        }
        match route {
            Route::Local(repo) => Ok(repo),
            Route::Remote(r) => Err(ProxyError::ReadOnlyRemote {
                repo: r.repo.to_string(),
                upstream: self.upstreams[r.upstream].name().to_string(),
            }),
            Route::AnyHost(r) => Err(ProxyError::ReadOnlyRemote {
                repo: r.repo.to_string(),
                upstream: r.host,
            }),
            Route::Virtual { push_to, members } => match push_to {
                Some(repo) => Ok(repo),
                None => Err(ProxyError::VirtualReadOnly {
                    repo: members
                        .first()
                        .and_then(|m| m.repo())
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                }),
            },
        }
    }

    fn client(&self, remote: &Remote, any_host: bool) -> Result<Arc<UpstreamClient>> {
        if !any_host {
            return Ok(self.upstreams[remote.upstream].clone());
        }
        let mut clients = self.any_hosts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&remote.host) {
            return Ok(client.clone());
        }
        let client = Arc::new(
            UpstreamClient::any_host(&remote.host, self.timeouts, self.policy.clone()).map_err(|e| {
                UpstreamError::Unavailable {
                    upstream: remote.host.clone(),
                    reason: e.to_string(),
                }
            })?,
        );
        clients.insert(remote.host.clone(), client.clone());
        Ok(client)
    }

    /// Makes sure the cache holds what `reference` names in the remote
    /// repository, as fresh as the rules want it: a digest once, a tag
    /// confirmed with the upstream after the freshness time. When the
    /// upstream cannot be asked, a cached tag is served as it is; when it
    /// says the tag is gone, the cached one is kept (`serve_deleted`).
    /// Afterwards the registry answers from the repository `remote.repo`;
    /// the cached manifest is returned when it was found and is still the
    /// one (`None` after a fetch, and when nothing is there).
    pub async fn fill_manifest(
        &self,
        remote: &Remote,
        any_host: bool,
        reference: &Reference,
    ) -> Result<Option<StoredManifest>> {
        self.fill_manifest_as(remote, any_host, reference, Provenance::Mirrored)
            .await
    }

    /// [`Proxy::fill_manifest`], recording what it fetches as `provenance`
    /// (a preload's are snapshots).
    pub async fn fill_manifest_as(
        &self,
        remote: &Remote,
        any_host: bool,
        reference: &Reference,
        provenance: Provenance,
    ) -> Result<Option<StoredManifest>> {
        let cached = self.registry.find_manifest(&remote.repo, reference).await?;
        let tag = match reference {
            Reference::Digest(_) if cached.is_some() => return Ok(self.hit(cached)),
            Reference::Digest(_) => None,
            Reference::Tag(t) => Some(t.as_str()),
        };
        if self.offline {
            return Ok(self.hit(cached));
        }
        if let (Some(tag), Some(_)) = (tag, &cached) {
            if self.fresh(&remote.repo, tag) {
                return Ok(self.hit(cached));
            }
        }
        self.counters.misses.inc();
        let client = self.client(remote, any_host)?;
        let reference_text = reference.to_string();
        let outcome = async {
            if let Some(cached) = &cached {
                // A HEAD says whether the tag moved, without the body.
                if let Some(digest) = client.head_manifest(&remote.path, &reference_text).await? {
                    if digest == cached.digest {
                        return Ok(Unchanged(true));
                    }
                    self.fetch_manifest(&client, remote, &digest.to_string(), tag, provenance)
                        .await?;
                    return Ok(Unchanged(false));
                }
            }
            self.fetch_manifest(&client, remote, &reference_text, tag, provenance)
                .await?;
            Ok(Unchanged(false))
        }
        .await;
        match outcome {
            Ok(unchanged) => {
                if let Some(tag) = tag {
                    self.confirm(&remote.repo, tag);
                }
                // The cached manifest, when it is still the one: the caller
                // need not read it again.
                Ok(if unchanged.0 { cached } else { None })
            }
            Err(ProxyError::Upstream(e)) => {
                self.counters.upstream_errors.inc();
                match (e.as_ref(), &cached) {
                    (UpstreamError::NotFound { .. }, Some(_)) if self.serve_deleted => {
                        tracing::warn!(repo = %remote.repo, reference = %reference_text, upstream = client.name(),
                            "the upstream no longer has this tag; serving the cached image (proxy.serve_deleted)");
                        if let Some(tag) = tag {
                            self.confirm(&remote.repo, tag);
                        }
                        Ok(cached)
                    }
                    (UpstreamError::NotFound { .. }, _) => Ok(None),
                    (_, Some(_)) if e.is_unavailable() => {
                        self.counters.served_stale.inc();
                        tracing::warn!(repo = %remote.repo, reference = %reference_text, error = %e,
                            "serving the cached tag without confirming it with its upstream");
                        Ok(cached)
                    }
                    _ => Err(ProxyError::Upstream(e)),
                }
            }
            Err(other) => Err(other),
        }
    }

    /// Counts a read the cache answered without the proxy's help.
    pub fn count_hit(&self) {
        self.counters.hits.inc();
    }

    fn hit(&self, cached: Option<StoredManifest>) -> Option<StoredManifest> {
        self.count_hit();
        cached
    }

    /// Fetches the manifest `reference` names, checks its digest, and stores
    /// it byte for byte (moving `tag` to it).
    async fn fetch_manifest(
        &self,
        client: &UpstreamClient,
        remote: &Remote,
        reference: &str,
        tag: Option<&str>,
        provenance: Provenance,
    ) -> Result<()> {
        let limit = self.registry.manifest_limit();
        let (body, content_type) = client.get_manifest(&remote.path, reference, limit).await?;
        let digest = match reference.parse::<Digest>() {
            Ok(wanted) => {
                let actual = Digest::of(wanted.algorithm(), &body);
                if actual != wanted {
                    return Err(UpstreamError::Invalid {
                        upstream: client.name().to_string(),
                        reason: format!("a manifest whose digest is {actual}, not the {wanted} asked for"),
                    }
                    .into());
                }
                actual
            }
            Err(_) => Digest::sha256_of(&body),
        };
        let store_as = match tag {
            Some(t) => t.parse().map(Reference::Tag).ok(),
            None => None,
        }
        .unwrap_or(Reference::Digest(digest));
        self.registry
            .store_fetched_manifest(
                &remote.repo,
                &store_as,
                content_type.as_deref(),
                body,
                client.name(),
                provenance,
            )
            .await
            .map_err(|e| match e {
                // What the upstream sent is not a manifest this registry takes.
                RegistryError::ManifestInvalid(reason) | RegistryError::DigestInvalid(reason) => {
                    UpstreamError::Invalid {
                        upstream: client.name().to_string(),
                        reason: format!("a manifest this registry refuses: {reason}"),
                    }
                    .into()
                }
                other => ProxyError::Registry(other),
            })?;
        Ok(())
    }

    fn fresh(&self, repo: &RepoName, tag: &str) -> bool {
        let confirmed = self.confirmed.lock().unwrap_or_else(|p| p.into_inner());
        confirmed
            .get(&(repo.to_string(), tag.to_string()))
            .is_some_and(|at| self.clock.now_ms().saturating_sub(*at) < self.freshness_ms)
    }

    fn confirm(&self, repo: &RepoName, tag: &str) {
        let mut confirmed = self.confirmed.lock().unwrap_or_else(|p| p.into_inner());
        confirmed.insert((repo.to_string(), tag.to_string()), self.clock.now_ms());
    }

    /// A blob of a remote repository: from the cache, or fetched (once,
    /// however many ask) and streamed while it is stored.
    pub async fn blob(
        &self,
        remote: &Remote,
        any_host: bool,
        digest: &Digest,
        head: bool,
        wanted: Option<ByteRange>,
    ) -> Result<BlobAnswer> {
        let scope = scope_of(remote);
        if present_in(&self.registry, &remote.repo, scope, digest).await? {
            self.counters.hits.inc();
            return Ok(BlobAnswer::Cached(remote.repo.clone()));
        }
        if self.offline {
            return Err(RegistryError::BlobUnknown.into());
        }
        let client = self.client(remote, any_host)?;
        if head {
            self.counters.misses.inc();
            return match client.head_blob(&remote.path, digest).await {
                Ok(size) => Ok(BlobAnswer::Size(size)),
                Err(UpstreamError::NotFound { .. }) => Err(RegistryError::BlobUnknown.into()),
                Err(e) => Err(e.into()),
            };
        }
        self.counters.misses.inc();
        let key = FetchKey {
            scope: scope.to_string(),
            digest: digest.clone(),
        };
        let (fetch, writer) = self.fetches.join_or_start(&key);
        if let Some(writer) = writer {
            let job = BlobFetch {
                registry: self.registry.clone(),
                client,
                repo: remote.repo.clone(),
                path: remote.path.clone(),
                key,
                fetches: self.fetches.clone(),
                counters: self.counters.clone(),
                batcher: self.batcher.clone(),
            };
            // Its own task: a client that goes away does not stop it.
            tokio::spawn(job.run(writer));
        }
        let state = fetch.started().await;
        match (state.size, state.end) {
            (_, Some(FetchEnd::Failed(e))) => match e.as_ref() {
                UpstreamError::NotFound { .. } => Err(RegistryError::BlobUnknown.into()),
                _ => Err(ProxyError::Upstream(e)),
            },
            (_, Some(FetchEnd::Stored | FetchEnd::StoredElsewhere))
                if present_in(&self.registry, &remote.repo, scope, digest).await? =>
            {
                Ok(BlobAnswer::Cached(remote.repo.clone()))
            }
            (Some(size), _) => {
                let range = match wanted {
                    None => None,
                    Some(r) => Some(r.resolve(size).ok_or(RegistryError::RangeNotSatisfiable { size })?),
                };
                let (start, end) = range.as_ref().map_or((0, size), |r| (r.start, r.end));
                Ok(BlobAnswer::Streaming {
                    size,
                    range,
                    body: fetch.read(start, end),
                    fetch: FetchHandle(fetch),
                })
            }
            (None, _) => Err(RegistryError::BlobUnknown.into()),
        }
    }

    /// Tags of a remote repository: the upstream's, with the cached ones
    /// (an upstream that cannot be asked leaves the cached ones alone).
    pub async fn tags(&self, remote: &Remote, any_host: bool) -> Result<Vec<String>> {
        const MAX_TAGS: usize = 10_000;
        let mut tags: BTreeSet<String> = self.cached_tags(&remote.repo).await?.into_iter().collect();
        if !self.offline {
            match self.client(remote, any_host)?.list_tags(&remote.path, MAX_TAGS).await {
                Ok(upstream) => tags.extend(upstream),
                Err(UpstreamError::NotFound { .. }) if !tags.is_empty() => {}
                Err(UpstreamError::NotFound { .. }) => return Err(RegistryError::NameUnknown.into()),
                Err(e) if e.is_unavailable() && !tags.is_empty() => {
                    self.counters.served_stale.inc();
                    tracing::warn!(repo = %remote.repo, error = %e, "listing only the cached tags");
                }
                Err(e) => return Err(e.into()),
            }
        } else if tags.is_empty() {
            return Err(RegistryError::NameUnknown.into());
        }
        Ok(tags.into_iter().collect())
    }

    /// Brings the upstream's referrers of `subject` into the cache: those its
    /// referrers API lists are fetched by digest (the registry's own
    /// referrers API then lists them with what was cached before), and so are
    /// the tag schema's `sha256-<hex>.sig|.att|.sbom` tags (all an upstream
    /// without a referrers API has, and where cosign keeps signatures).
    /// Returns the manifests cached under such tags
    /// that name no subject themselves, for the answer to list too.
    pub async fn fill_referrers(&self, remote: &Remote, any_host: bool, subject: &Digest) -> Result<Vec<Referrer>> {
        if !self.offline {
            let client = self.client(remote, any_host)?;
            match client.referrers(&remote.path, subject).await {
                Ok(Some(index)) => {
                    #[derive(serde::Deserialize)]
                    struct Index {
                        #[serde(default)]
                        manifests: Vec<Listed>,
                    }
                    #[derive(serde::Deserialize)]
                    struct Listed {
                        digest: String,
                    }
                    let index: Index = serde_json::from_slice(&index).map_err(|e| UpstreamError::Invalid {
                        upstream: client.name().to_string(),
                        reason: format!("a referrers index that is not an image index: {e}"),
                    })?;
                    for listed in index.manifests {
                        let Ok(digest) = listed.digest.parse::<Digest>() else {
                            continue;
                        };
                        if let Err(e) = self.fill_manifest(remote, any_host, &Reference::Digest(digest)).await {
                            tracing::warn!(repo = %remote.repo, error = %e, "a referrer listed upstream was not cached");
                        }
                    }
                }
                // No referrers API: the tag schema below is all there is.
                Ok(None) => {}
                Err(e) if e.is_unavailable() => {
                    self.counters.upstream_errors.inc();
                    self.counters.served_stale.inc();
                    tracing::warn!(repo = %remote.repo, error = %e, "listing only the cached referrers");
                }
                Err(UpstreamError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            // cosign keeps signatures under tags even where a referrers API
            // exists, so the tag schema is looked at either way.
            for tag in tag_schema(subject) {
                let Ok(tag) = tag.parse() else { continue };
                match self.fill_manifest(remote, any_host, &Reference::Tag(tag)).await {
                    Ok(_) | Err(ProxyError::Registry(RegistryError::ManifestUnknown | RegistryError::NameUnknown)) => {}
                    Err(e) => tracing::warn!(repo = %remote.repo, error = %e, "a tag-schema referrer was not cached"),
                }
            }
        }
        let mut found = Vec::new();
        for tag in tag_schema(subject) {
            let Ok(tag) = tag.parse() else { continue };
            let Some(stored) = self.registry.find_manifest(&remote.repo, &Reference::Tag(tag)).await? else {
                continue;
            };
            let Ok(parsed) = berth_oci::Manifest::parse(&stored.body, Some(&stored.media_type)) else {
                continue;
            };
            if parsed.subject.is_some() {
                // The referrers API lists it by its subject already.
                continue;
            }
            found.push(Referrer {
                artifact_type: parsed
                    .referrer_artifact_type()
                    .or_else(|| parsed.config.as_ref().map(|c| c.media_type.clone())),
                annotations_json: parsed.annotations.as_ref().and_then(|a| serde_json::to_string(a).ok()),
                size: stored.body.len() as u64,
                digest: stored.digest,
                media_type: stored.media_type,
            });
        }
        Ok(found)
    }

    async fn cached_tags(&self, repo: &RepoName) -> Result<Vec<String>> {
        match self.registry.all_tags(repo).await {
            Err(RegistryError::NameUnknown) => Ok(Vec::new()),
            other => Ok(other?),
        }
    }
}

/// The tags under which cosign and other tools of the referrers tag schema
/// keep a signature, attestation or SBOM of `subject`.
fn tag_schema(subject: &Digest) -> [String; 3] {
    let base = format!("{}-{}", subject.algorithm().as_str(), subject.hex());
    [format!("{base}.sig"), format!("{base}.att"), format!("{base}.sbom")]
}

/// The host (and port, if not the scheme's default) of an upstream URL.
fn host_of(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

/// The cache repositories' prefix for the upstream `remote` is of.
fn scope_of(remote: &Remote) -> &str {
    remote
        .repo
        .as_str()
        .strip_suffix(remote.path.as_str())
        .unwrap_or_default()
}

/// Whether the cache repository `repo` holds the blob, linking it first when
/// another cache repository of the same upstream (`scope`) has it, fetched
/// through another name: the upstream need not be asked again. The bytes of
/// other repositories (local ones, other upstreams') are never lent this
/// way: a client that knows only a blob's digest must not be able to read it
/// through an upstream that merely claims to have it, so such a blob is
/// fetched from this upstream, which then shows it has the bytes.
async fn present_in(
    registry: &Registry,
    repo: &RepoName,
    scope: &str,
    digest: &Digest,
) -> std::result::Result<bool, RegistryError> {
    if registry.has_blob(repo, digest).await? {
        return Ok(true);
    }
    if scope.is_empty() || registry.blob_size(digest).await?.is_none() {
        return Ok(false);
    }
    for source in registry.repositories_with_blob(digest).await? {
        if source.as_str().starts_with(scope) {
            return registry.mount_blob(repo, digest, Some(&source)).await;
        }
    }
    Ok(false)
}

/// One blob fetched from an upstream into the store, spooled for readers.
struct BlobFetch {
    registry: Arc<Registry>,
    client: Arc<UpstreamClient>,
    repo: RepoName,
    path: String,
    key: FetchKey,
    fetches: Arc<Fetches>,
    counters: Arc<ProxyCounters>,
    batcher: Arc<batch::Batcher>,
}

impl BlobFetch {
    async fn run(self, writer: fetch::FetchWriter) {
        let end = match self.fetch(&writer).await {
            Ok(end) => end,
            Err(e) => {
                self.counters.upstream_errors.inc();
                tracing::warn!(digest = %self.key.digest, repo = %self.repo, error = %e, "blob fetch failed");
                FetchEnd::Failed(Arc::new(e))
            }
        };
        // Later requests find the blob in the store (or fetch again after a failure).
        self.fetches.forget(&self.key);
        writer.finish(end);
    }

    async fn fetch(&self, writer: &fetch::FetchWriter) -> std::result::Result<FetchEnd, UpstreamError> {
        let store_error = |e: RegistryError| self.store_error(e);
        let digest = &self.key.digest;
        let present = || async {
            present_in(&self.registry, &self.repo, &self.key.scope, digest)
                .await
                .map_err(store_error)
        };
        // Replicas sharing the stores fetch a blob once: the one leading
        // this job fetches, the others wait for the blob to be recorded.
        // (The caller has just looked for it: no need to look first.)
        let job = format!("proxy-fetch {}{}", self.key.scope, digest);
        let lease = loop {
            match self.registry.lead(&job).await.map_err(store_error)? {
                Some(lease) => break lease,
                None => tokio::time::sleep(Duration::from_millis(200)).await,
            }
            if present().await? {
                return Ok(FetchEnd::StoredElsewhere);
            }
        };
        // Stored by the lease's last holder, or meanwhile by a push?
        if present().await? {
            return Ok(FetchEnd::StoredElsewhere);
        }
        self.counters.blob_fetches.inc();
        let answer = self.client.get_blob(&self.path, digest).await?;
        let size = answer.content_length().ok_or_else(|| UpstreamError::Invalid {
            upstream: self.client.name().to_string(),
            reason: "a blob without a Content-Length".into(),
        })?;
        writer.set_size(size);
        if size <= batch::SMALL_BLOB_MAX {
            return self.fetch_small(writer, answer, size, lease).await;
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(16);
        let body: berth_storage::ByteStream = Box::pin(tokio_stream_from(rx));
        // The pump below checks the digest, once for the clients and the store.
        let store = self.registry.push_checked_blob(&self.repo, digest, body, size);
        let pump = async move {
            let spool_failed = |e: std::io::Error| UpstreamError::Unavailable {
                upstream: self.client.name().to_string(),
                reason: format!("spooling the blob failed: {e}"),
            };
            let pumped = self
                .pump(answer, size, |chunk| {
                    let tx = tx.clone();
                    let spooled = writer.append(&chunk).map_err(spool_failed);
                    async move {
                        spooled?;
                        Ok(tx.send(Ok(chunk)).await.is_ok())
                    }
                })
                .await;
            match &pumped {
                // Readers may have the last byte.
                Ok(Pumped::Checked) => writer.verified(),
                // The store stopped reading: its error says why.
                Ok(Pumped::Stopped) => {}
                // Ends the store's body with an error: it stores nothing.
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                }
            }
            pumped
        };
        let (stored, pumped) = tokio::join!(store, pump);
        drop(lease);
        pumped?;
        match stored {
            Ok(_) => Ok(FetchEnd::Stored),
            Err(RegistryError::DigestInvalid(reason) | RegistryError::UploadInvalid(reason)) => {
                Err(UpstreamError::Invalid {
                    upstream: self.client.name().to_string(),
                    reason: format!("a blob that does not match {}: {reason}", self.key.digest),
                })
            }
            Err(e) => Err(self.store_error(e)),
        }
    }

    /// A small blob: held whole, checked, then stored with other small
    /// blobs (see [`batch`]), while readers get its bytes from the spool.
    async fn fetch_small(
        &self,
        writer: &fetch::FetchWriter,
        answer: upstream::Answer,
        size: u64,
        lease: berth_meta::JobLease,
    ) -> std::result::Result<FetchEnd, UpstreamError> {
        let mut whole = bytes::BytesMut::with_capacity(usize::try_from(size).unwrap_or(0));
        self.pump(answer, size, |chunk| {
            whole.extend_from_slice(&chunk);
            std::future::ready(Ok(true))
        })
        .await?;
        let bytes = whole.freeze();
        // Checked: every reader may have it now, before it is stored.
        writer.whole(bytes.clone());
        let blob = crate::registry::CheckedBlob {
            repo: self.repo.clone(),
            digest: self.key.digest.clone(),
            bytes,
        };
        let stored = self.batcher.store(blob).await;
        drop(lease);
        match stored {
            Ok(()) => Ok(FetchEnd::Stored),
            Err(e) => Err(self.store_error(e)),
        }
    }

    /// Hands the upstream's body to `sink` chunk by chunk (it answers
    /// whether it wants more), checking the body's length and digest.
    async fn pump<F, Fut>(
        &self,
        answer: upstream::Answer,
        size: u64,
        mut sink: F,
    ) -> std::result::Result<Pumped, UpstreamError>
    where
        F: FnMut(bytes::Bytes) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<bool, UpstreamError>>,
    {
        let digest = &self.key.digest;
        let upstream_name = || self.client.name().to_string();
        let invalid = |reason: String| UpstreamError::Invalid {
            upstream: upstream_name(),
            reason,
        };
        let mut upstream = Box::pin(answer.into_stream());
        let mut received: u64 = 0;
        let mut hasher = berth_oci::DigestHasher::new(digest.algorithm());
        while let Some(chunk) = upstream.next().await {
            let chunk = chunk.map_err(|e| UpstreamError::Unavailable {
                upstream: upstream_name(),
                reason: format!("the blob's body broke off: {e}"),
            })?;
            received += chunk.len() as u64;
            self.counters.bytes_fetched.inc_by(chunk.len() as u64);
            if received > size {
                return Err(invalid(format!(
                    "a blob longer than its Content-Length of {size} bytes"
                )));
            }
            hasher.update(&chunk);
            if !sink(chunk).await? {
                return Ok(Pumped::Stopped);
            }
        }
        if received < size {
            return Err(invalid(format!(
                "a blob of {received} bytes, shorter than its Content-Length of {size}"
            )));
        }
        let actual = hasher.finish();
        if &actual != digest {
            return Err(invalid(format!(
                "a blob that does not match {digest}: its bytes hash to {actual}"
            )));
        }
        Ok(Pumped::Checked)
    }

    fn store_error(&self, e: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Unavailable {
            upstream: self.client.name().to_string(),
            reason: format!("storing the blob failed: {e}"),
        }
    }
}

/// A stream of what a channel receives, until its senders are gone.
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}
