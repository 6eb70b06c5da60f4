//! The application: stores opened from the configuration, the registry core
//! over them, the HTTP server and its background jobs.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::{HeaderName, Request};
use berth_meta::{AccessStore, LifecycleStore, PgMeta, PgOptions, SqliteMeta, DEFAULT_STORE};
use berth_storage::s3::S3BlobStore;
use berth_storage::{BlobStore, FsBlobStore};
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::auth::Auth;
use crate::clock;
use crate::config::AuthMode;
use crate::config::{Config, MetaBackend, StorageBackend};
use crate::lifecycle::{Lifecycle, Scope};
use crate::namespaces::NamespaceRules;
use crate::proxy::Proxy;
use crate::registry::stores::check_store_name;
use crate::registry::{BlobStores, Limits, NamedStore, Registry};
use crate::webhooks::Webhooks;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Everything a request handler may use.
pub struct App {
    pub registry: Arc<Registry>,
    pub proxy: Proxy,
    pub auth: Auth,
    pub lifecycle: Lifecycle,
    pub webhooks: Arc<Webhooks>,
    pub config: Config,
}

impl App {
    /// Opens the stores named by `config`.
    pub async fn open(mut config: Config) -> anyhow::Result<Self> {
        ensure_data_dir(&config.data_dir)?;
        let (meta, stores) = open_stores(&config).await?;
        let clock = clock::from_env()?;
        let source = crate::webhooks::Source {
            addr: config.listen.clone(),
            instance_id: uuid::Uuid::new_v4().to_string(),
        };
        let webhook_store: Arc<dyn berth_meta::WebhookStore> = meta.clone();
        let webhooks = Arc::new(
            Webhooks::new(&config.webhooks, webhook_store, clock.clone(), source)
                .context("invalid webhooks configuration")?,
        );
        let mut registry = Registry::new(meta.clone(), stores.clone(), clock.clone(), registry_limits(&config)?);
        let mut lifecycle = Lifecycle::new(meta.clone(), stores, clock.clone(), &config)
            .map_err(|e| anyhow::anyhow!("invalid lifecycle configuration: {e}"))?;
        if webhooks.active() {
            registry = registry.notifying(webhooks.clone());
            lifecycle = lifecycle.notifying(webhooks.clone());
        }
        let registry = Arc::new(registry);
        let lifecycle = lifecycle
            .seeing_pulls_of(registry.pull_recorder())
            .seeing_touches_of(registry.touch_recorder());
        share_token_key(&mut config, meta.as_ref()).await?;
        let proxy = Proxy::new(
            &config.proxy,
            config.registry.mode,
            registry.clone(),
            clock.clone(),
            config.data_dir.join("proxy-spool"),
        )
        .context("invalid proxy configuration")?;
        let auth = Auth::open(&config.auth, &config.data_dir, meta, clock).context("invalid auth configuration")?;
        Ok(App {
            registry,
            proxy,
            auth,
            lifecycle,
            webhooks,
            config,
        })
    }
}

/// The limits the registry core enforces, from the configuration.
pub fn registry_limits(config: &Config) -> anyhow::Result<Limits> {
    Ok(Limits {
        manifest_max_bytes: config.limits.manifest_max_bytes,
        namespaces: NamespaceRules::from_config(&config.lifecycle)
            .map_err(|e| anyhow::anyhow!("invalid lifecycle configuration: {e}"))?,
        gc_grace_ms: i64::try_from(config.gc.grace_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
    })
}

/// Name of the token signing key in a store that keeps shared secrets.
const TOKEN_KEY_SECRET: &str = "token-signing-key";

/// Gives replicas sharing a database one token signing key, so a token issued
/// by any of them is accepted by all, unless the configuration names a key.
async fn share_token_key(config: &mut Config, meta: &dyn Meta) -> anyhow::Result<()> {
    let token = &config.auth.token;
    if config.auth.mode != AuthMode::Token || token.key.is_some() || token.key_file.is_some() {
        return Ok(());
    }
    let mut candidate = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut candidate);
    let shared = meta
        .shared_secret(TOKEN_KEY_SECRET, &hex::encode(candidate))
        .await
        .context("reading the shared token signing key")?;
    if let Some(key) = shared {
        config.auth.token.key = Some(key);
    }
    Ok(())
}

/// Creates the data directory when it is missing.
pub fn ensure_data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the data directory {}", dir.display()))
}

/// Everything the registry, auth and the lifecycle jobs need of the metadata
/// store, as one object: each backend implements all of it.
pub trait Meta: LifecycleStore + AccessStore + berth_meta::WebhookStore {}

impl<T: LifecycleStore + AccessStore + berth_meta::WebhookStore> Meta for T {}

/// The stores the configuration names.
pub async fn open_stores(config: &Config) -> anyhow::Result<(Arc<dyn Meta>, Arc<BlobStores>)> {
    let stores = open_blob_stores(config).await?;
    Ok((open_meta(config).await?, Arc::new(stores)))
}

/// Every blob store the configuration names, with its routes. Names and
/// routes are checked before any store is opened.
pub async fn open_blob_stores(config: &Config) -> anyhow::Result<BlobStores> {
    let storage = &config.storage;
    for name in storage.stores.keys() {
        check_store_name(name).context("invalid [storage.stores] configuration")?;
    }
    for route in &storage.routes {
        if route.store != DEFAULT_STORE && !storage.stores.contains_key(&route.store) {
            anyhow::bail!(
                "invalid [[storage.routes]] configuration: route {:?} sends repositories to the store {:?}, which \
                 [storage.stores] does not name (configured: {})",
                route.pattern,
                route.store,
                std::iter::once(DEFAULT_STORE)
                    .chain(storage.stores.keys().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let default = NamedStore::new(DEFAULT_STORE, open_blobs(config).await?, storage.redirect);
    let mut others = Vec::with_capacity(storage.stores.len());
    for (name, store) in &storage.stores {
        let dir = store
            .path
            .clone()
            .unwrap_or_else(|| config.data_dir.join("stores").join(name));
        let opened = open_store(store.backend, store.redirect, store.s3.as_ref(), &dir)
            .await
            .with_context(|| format!("cannot open the blob store [storage.stores.{name}]"))?;
        others.push(NamedStore::new(name.clone(), opened, store.redirect));
    }
    let routes: Vec<(String, String)> = storage
        .routes
        .iter()
        .map(|r| (r.pattern.clone(), r.store.clone()))
        .collect();
    BlobStores::new(default, others, &routes).context("invalid [storage] configuration")
}

/// The default blob store of the configuration, the top-level `[storage]`
/// (used by the server and `berth migrate`).
pub async fn open_blobs(config: &Config) -> anyhow::Result<Arc<dyn BlobStore>> {
    let storage = &config.storage;
    open_store(storage.backend, storage.redirect, storage.s3.as_ref(), &config.data_dir)
        .await
        .context("cannot open the default blob store [storage]")
}

/// One blob store: files under `dir`, or a bucket.
async fn open_store(
    backend: StorageBackend,
    redirect: bool,
    s3: Option<&berth_storage::S3Config>,
    dir: &Path,
) -> anyhow::Result<Arc<dyn BlobStore>> {
    let blobs: Arc<dyn BlobStore> = match backend {
        StorageBackend::Filesystem => Arc::new(
            FsBlobStore::open(dir).with_context(|| format!("the directory {} is not writable", dir.display()))?,
        ),
        StorageBackend::S3 => {
            let s3 = s3.context("backend = \"s3\" needs an s3 section (bucket, endpoint, ...)")?;
            Arc::new(
                S3BlobStore::open(s3)
                    .await
                    .with_context(|| format!("cannot use the S3 bucket {:?}", s3.bucket))?,
            )
        }
    };
    if redirect && backend == StorageBackend::Filesystem {
        anyhow::bail!("redirect needs a store clients can download from directly (backend = \"s3\")");
    }
    Ok(blobs)
}

/// The metadata store the configuration names (used by the server and the
/// operator subcommands alike).
pub async fn open_meta(config: &Config) -> anyhow::Result<Arc<dyn Meta>> {
    match config.meta.backend {
        MetaBackend::Sqlite => {
            let db = config.data_dir.join("berth.db");
            let meta = SqliteMeta::open(&db)
                .await
                .with_context(|| format!("cannot open the metadata database {}", db.display()))?;
            Ok(Arc::new(meta))
        }
        MetaBackend::Postgres => Ok(Arc::new(open_postgres(config).await?)),
    }
}

/// The PostgreSQL database of `meta.url`, with the configured pool.
pub async fn open_postgres(config: &Config) -> anyhow::Result<PgMeta> {
    let url = config
        .meta
        .url
        .as_deref()
        .context("meta.backend = \"postgres\" needs meta.url = \"postgres://...\"")?;
    let options = PgOptions {
        max_connections: config.meta.max_connections,
        min_connections: config.meta.min_connections,
        acquire_timeout_secs: config.meta.acquire_timeout_secs,
    };
    PgMeta::connect(url, options)
        .await
        .with_context(|| format!("cannot use the PostgreSQL database {}", config.meta.redacted_url()))
}

/// Runs the server until SIGINT or SIGTERM, then drains open requests.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    let app = Arc::new(App::open(config).await?);
    spawn_upload_purge(app.clone());
    spawn_pull_flush(app.clone());
    app.lifecycle
        .sync_config_policies()
        .await
        .context("writing the configuration's retention policies")?;
    spawn_lifecycle_jobs(app.clone());
    spawn_webhooks(app.clone());

    let trace = TraceLayer::new_for_http()
        .make_span_with(|req: &Request<_>| {
            let id = req
                .headers()
                .get(&REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        })
        .on_request(())
        .on_response(DefaultOnResponse::new().level(Level::DEBUG));
    let router = crate::api::router(app.clone())
        .layer(CatchPanicLayer::new())
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(trace)
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid));

    let shutdown = shutdown_signal()?;
    if warn_open(app.auth.mode, addr) {
        tracing::warn!(
            "AUTHENTICATION IS OFF (auth.mode = \"none\") and the registry listens on {addr}: anyone who can \
             reach it may push, pull and delete. Set auth.mode = \"token\" for anything but a laptop."
        );
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"), data_dir = %app.config.data_dir.display(), auth = ?app.auth.mode, "listening on {addr}");
    crate::connections::serve(listener, router, shutdown).await;
    if let Err(e) = app.registry.flush_pulls().await {
        tracing::warn!(error = %e, "recording the last pulls failed");
    }
    if let Err(e) = app.registry.flush_touches().await {
        tracing::warn!(error = %e, "recording the last blob reads failed");
    }
    if let Err(e) = app.webhooks.flush().await {
        tracing::warn!(error = %e, "queueing the last webhook events failed");
    }
    tracing::info!("stopped");
    Ok(())
}

/// How often gathered pull counts and blob reads are written.
const PULL_FLUSH_EVERY: Duration = Duration::from_secs(1);

fn spawn_pull_flush(app: Arc<App>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PULL_FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = app.registry.flush_pulls().await {
                tracing::warn!(error = %e, "recording pulls failed; will retry");
            }
            if let Err(e) = app.registry.flush_touches().await {
                tracing::warn!(error = %e, "recording blob reads failed; will retry");
            }
        }
    });
}

/// Runs `job` every `every_secs` seconds (never when 0), first after one period.
fn every<F, Fut>(every_secs: u64, job: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    if every_secs == 0 {
        return;
    }
    let period = Duration::from_secs(every_secs);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            job().await;
        }
    });
}

/// Runs `job` when this process leads `name` among the replicas sharing the
/// metadata store; otherwise another replica runs it now, and this turn is skipped.
async fn when_leading<Fut: std::future::Future<Output = ()>>(app: &App, name: &str, job: Fut) {
    match app.lifecycle.lead_job(name).await {
        Ok(Some(_lease)) => job.await,
        Ok(None) => tracing::debug!(job = name, "another replica runs this job now"),
        Err(e) => {
            tracing::warn!(job = name, error = %e, "cannot tell whether another replica runs this job; will retry")
        }
    }
}

/// Tag expiry, retention and garbage collection on their schedules.
fn spawn_lifecycle_jobs(app: Arc<App>) {
    let rules = [
        (
            app.config.lifecycle.expiry_interval_secs,
            Scope::Expiry,
            "lifecycle:expiry",
        ),
        (
            app.config.retention.interval_secs,
            Scope::Retention,
            "lifecycle:retention",
        ),
    ];
    for (secs, scope, actor) in rules {
        let app = app.clone();
        every(secs, move || {
            let app = app.clone();
            async move {
                when_leading(&app, actor, async {
                    match app.lifecycle.run(None, scope, actor).await {
                        Ok(s) if s.tags_deleted + s.manifests_deleted > 0 => tracing::info!(
                            job = actor,
                            tags_deleted = s.tags_deleted,
                            manifests_deleted = s.manifests_deleted,
                            skipped_changed = s.skipped_changed,
                            "lifecycle run done"
                        ),
                        Ok(_) => tracing::debug!(job = actor, "lifecycle run found nothing to delete"),
                        Err(e) => tracing::warn!(job = actor, error = %e, "lifecycle run failed; will retry"),
                    }
                })
                .await;
            }
        });
    }
    if app.config.proxy.max_bytes > 0 {
        let app = app.clone();
        every(app.config.proxy.evict_interval_secs, move || {
            let app = app.clone();
            async move {
                when_leading(&app, "proxy-evict", async {
                    let cap = app.config.proxy.max_bytes;
                    match crate::proxy::evict::evict_over_cap(&app.lifecycle, &app.registry, cap).await {
                        Ok(e) if e.images_evicted > 0 => tracing::info!(
                            images_evicted = e.images_evicted,
                            bytes_evicted = e.bytes_evicted,
                            cached_bytes = e.cached_bytes,
                            "cache over proxy.max_bytes: evicted the least recently used"
                        ),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "cache eviction failed; will retry"),
                    }
                })
                .await;
            }
        });
    }
    every(app.config.gc.interval_secs, move || {
        let app = app.clone();
        async move {
            when_leading(&app, "gc", async {
                match app
                    .lifecycle
                    .collect_garbage(false, |line| tracing::debug!("gc: {line}"))
                    .await
                {
                    Ok(r) => tracing::info!(
                        blobs_removed = r.blobs_removed,
                        bytes_reclaimed = r.bytes_reclaimed,
                        manifests_removed = r.manifests_removed,
                        orphan_files_removed = r.orphan_files_removed,
                        elapsed_ms = r.elapsed_ms,
                        "garbage collection done"
                    ),
                    Err(e) => tracing::warn!(error = %e, "garbage collection failed; will retry"),
                }
            })
            .await;
        }
    });
}

/// An open registry on a non-loopback address deserves a loud warning.
fn warn_open(mode: AuthMode, addr: SocketAddr) -> bool {
    mode == AuthMode::None && !addr.ip().is_loopback()
}

/// Writes gathered webhook events to the queue every `flush_interval_ms`,
/// and delivers the queue while this replica leads the delivery job.
fn spawn_webhooks(app: Arc<App>) {
    if !app.webhooks.active() {
        return;
    }
    let every = Duration::from_millis(app.config.webhooks.flush_interval_ms.max(1));
    let webhooks = app.webhooks.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = webhooks.flush().await {
                tracing::warn!(error = %e, "queueing webhook events failed; will retry");
            }
        }
    });
    let webhooks = app.webhooks.clone();
    tokio::spawn(crate::webhooks::deliver::run(webhooks, move || {
        let app = app.clone();
        async move { Ok(app.lifecycle.lead_job(crate::webhooks::deliver::JOB).await?) }
    }));
}

fn spawn_upload_purge(app: Arc<App>) {
    let every = Duration::from_secs(app.config.uploads.purge_interval_secs.max(1));
    let max_age_ms = i64::try_from(app.config.uploads.stale_after_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            when_leading(&app, "upload-purge", async {
                match app.registry.purge_stale_uploads(max_age_ms).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(purged = n, "purged stale upload sessions"),
                    Err(e) => tracing::warn!(error = %e, "purging stale upload sessions failed"),
                }
            })
            .await;
        }
    });
}

/// Watches SIGINT and SIGTERM from the moment it is called (not from the
/// first poll), so a signal sent as soon as the server says it listens stops
/// it gracefully instead of killing it.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_open_registry_off_loopback_is_warned_about() {
        let any: SocketAddr = "0.0.0.0:5000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let v6_local: SocketAddr = "[::1]:5000".parse().unwrap();
        assert!(warn_open(AuthMode::None, any));
        assert!(!warn_open(AuthMode::None, local));
        assert!(!warn_open(AuthMode::None, v6_local));
        assert!(!warn_open(AuthMode::Token, any));
    }
}
