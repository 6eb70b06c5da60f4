//! The application: stores opened from the configuration, the registry core
//! over them, the HTTP server and its background jobs.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_meta::{AccessStore, LifecycleStore, PgMeta, PgOptions, SqliteMeta, DEFAULT_STORE};
use berth_storage::s3::S3BlobStore;
use berth_storage::{BlobStore, FsBlobStore};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;

use crate::auth::Auth;
use crate::clock;
use crate::config::AuthMode;
use crate::config::{Config, MetaBackend, StorageBackend};
use crate::lifecycle::{Lifecycle, Scope};
use crate::metrics::blobstore::TimedBlobStore;
use crate::metrics::meta::TimedMeta;
use crate::metrics::{Job, JobOutcome, Metrics};
use crate::namespaces::NamespaceRules;
use crate::proxy::Proxy;
use crate::registry::{BlobStores, Limits, NamedStore, Registry};
use crate::tls::ServerTls;
use crate::webhooks::Webhooks;

/// Everything a request handler may use.
pub struct App {
    pub registry: Arc<Registry>,
    pub proxy: Proxy,
    pub auth: Auth,
    pub lifecycle: Lifecycle,
    pub metrics: Arc<Metrics>,
    pub limiter: Arc<crate::limits::Limiter>,
    pub log: crate::telemetry::LogLevel,
    pub webhooks: Arc<Webhooks>,
    pub config: Config,
    /// For background jobs that read the store as a whole (the storage
    /// gauges); requests go through the registry, auth and lifecycle.
    meta: Arc<dyn Meta>,
    clock: Arc<dyn clock::Clock>,
}

impl App {
    /// Opens the stores named by `config`.
    pub async fn open(mut config: Config) -> anyhow::Result<Self> {
        ensure_data_dir(&config.data_dir)?;
        let metrics = Arc::new(Metrics::new());
        let (meta, stores) = open_stores(&config, Some(&metrics)).await?;
        let clock = clock::from_env()?;
        let webhooks = open_webhooks(&config, meta.clone(), clock.clone())?;
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
        let limiter = Arc::new(
            crate::limits::Limiter::new(&config.limits, metrics.clone()).context("invalid [limits] configuration")?,
        );
        for collector in proxy.counters.collectors() {
            metrics.register(collector);
        }
        if webhooks.active() {
            for collector in webhooks.counters.collectors() {
                metrics.register(collector);
            }
        }
        let mut auth = Auth::open(&config.auth, &config.data_dir, meta.clone(), clock.clone())
            .context("invalid auth configuration")?;
        if config.tls.is_some() {
            auth.scheme = "https";
        }
        Ok(App {
            registry,
            proxy,
            auth,
            lifecycle,
            metrics,
            limiter,
            log: crate::telemetry::LogLevel::fixed(&config.log.level),
            webhooks,
            config,
            meta,
            clock,
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

/// The webhooks of `config`, queueing into `meta`; `active()` is false when
/// no endpoint is configured.
pub fn open_webhooks(
    config: &Config,
    meta: Arc<dyn Meta>,
    clock: Arc<dyn clock::Clock>,
) -> anyhow::Result<Arc<Webhooks>> {
    let source = crate::webhooks::Source {
        addr: config.listen.clone(),
        instance_id: uuid::Uuid::new_v4().to_string(),
    };
    let store: Arc<dyn berth_meta::WebhookStore> = meta;
    let webhooks = Webhooks::new(&config.webhooks, store, clock, source).context("invalid webhooks configuration")?;
    Ok(Arc::new(webhooks))
}

/// Everything the registry, auth and the lifecycle jobs need of the metadata
/// store, as one object: each backend implements all of it.
pub trait Meta: LifecycleStore + AccessStore + berth_meta::WebhookStore + berth_meta::UiStore {}

impl<T: LifecycleStore + AccessStore + berth_meta::WebhookStore + berth_meta::UiStore> Meta for T {}

/// The stores the configuration names; with `metrics`, every operation of
/// each is timed into them.
pub async fn open_stores(
    config: &Config,
    metrics: Option<&Metrics>,
) -> anyhow::Result<(Arc<dyn Meta>, Arc<BlobStores>)> {
    let stores = open_blob_stores(config, metrics).await?;
    let mut meta = open_meta(config).await?;
    if let Some(metrics) = metrics {
        meta = TimedMeta::wrap(meta, metrics.db_duration.clone());
    }
    Ok((meta, Arc::new(stores)))
}

/// Every blob store the configuration names, with its routes. Names and
/// routes are checked before any store is opened.
pub async fn open_blob_stores(config: &Config, metrics: Option<&Metrics>) -> anyhow::Result<BlobStores> {
    let timed = |store: Arc<dyn BlobStore>, name: &str| match metrics {
        Some(m) => TimedBlobStore::wrap(store, name, m.blobstore_duration.clone()),
        None => store,
    };
    let storage = &config.storage;
    crate::config_check::check_storage(storage).context("invalid [storage] configuration")?;
    let default = NamedStore::new(
        DEFAULT_STORE,
        timed(open_blobs(config).await?, DEFAULT_STORE),
        storage.redirect,
    );
    let mut others = Vec::with_capacity(storage.stores.len());
    for (name, store) in &storage.stores {
        let dir = store
            .path
            .clone()
            .unwrap_or_else(|| config.data_dir.join("stores").join(name));
        let opened = open_store(store.backend, store.redirect, store.s3.as_ref(), &dir)
            .await
            .with_context(|| format!("cannot open the blob store [storage.stores.{name}]"))?;
        others.push(NamedStore::new(name.clone(), timed(opened, name), store.redirect));
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

/// Where the configuration came from, to read it again on SIGHUP.
pub struct ConfigSource {
    pub file: Option<std::path::PathBuf>,
    pub overrides: crate::config::Overrides,
}

/// Runs the server until SIGINT or SIGTERM, then drains open requests.
/// SIGHUP reads the configuration again and applies what can change
/// without a restart (the log level).
pub async fn serve(config: Config, source: ConfigSource, log: crate::telemetry::LogLevel) -> anyhow::Result<()> {
    // What `berth config check` checks, so both refuse a file for the same reasons.
    let problems = crate::config_check::check(&config);
    if !problems.is_empty() {
        let lines: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
        anyhow::bail!("invalid configuration:\n{}", lines.join("\n"));
    }
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    let tls = match &config.tls {
        Some(tls) => Some(Arc::new(ServerTls::load(tls).context("invalid [tls] configuration")?)),
        None => None,
    };
    let plain_listener = match config.tls.as_ref().and_then(|t| t.plain_listen.as_deref()) {
        Some(plain) => Some(
            TcpListener::bind(plain)
                .await
                .with_context(|| format!("cannot listen on tls.plain_listen = {plain}"))?,
        ),
        None => None,
    };
    let mut app = App::open(config).await?;
    app.log = log;
    let app = Arc::new(app);
    spawn_upload_purge(app.clone());
    spawn_pull_flush(app.clone());
    app.lifecycle
        .sync_config_policies()
        .await
        .context("writing the configuration's retention policies")?;
    spawn_lifecycle_jobs(app.clone());
    spawn_webhooks(app.clone());
    let reload = reload_signal()?;
    if let Some(tls) = &tls {
        tls.clone().spawn_reloads(reload.clone());
    }

    spawn_reload_on_hangup(app.clone(), source, reload.clone());
    spawn_usage_refresh(app.clone());
    let metrics_listener = match (&app.config.metrics.listen, app.config.metrics.enabled) {
        (Some(listen), true) => Some(
            TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen} (metrics.listen)"))?,
        ),
        _ => None,
    };
    // `/metrics` on the registry's listeners unless it has one of its own.
    let metrics_here = app.config.metrics.enabled && metrics_listener.is_none();
    let mut routes = crate::api::router(app.clone());
    if metrics_here {
        routes = routes.merge(crate::api::metrics_router(app.clone()));
    }
    let router = observed(
        routes.layer(axum::middleware::from_fn_with_state(
            app.limiter.clone(),
            crate::limits::limit_clients,
        )),
        &app.metrics,
    );
    let limiter = app.limiter.clone();
    every(LIMITER_CLEANUP_SECS, move || {
        let limiter = limiter.clone();
        async move { limiter.forget_idle() }
    });
    let stopping = CancellationToken::new();
    let shutdown = shutdown_signal()?;
    tokio::spawn({
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            stopping.cancel();
        }
    });
    if warn_open(app.auth.mode, addr) {
        tracing::warn!(
            "AUTHENTICATION IS OFF (auth.mode = \"none\") and the registry listens on {addr}: anyone who can \
             reach it may push, pull and delete. Set auth.mode = \"token\" for anything but a laptop."
        );
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"), data_dir = %app.config.data_dir.display(), auth = ?app.auth.mode, tls = tls.is_some(), "listening on {addr}");
    let limits = &app.config.limits;
    let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
    let timeouts = crate::connections::ConnectionLimits {
        header_read: secs(limits.header_read_timeout_secs),
        write_stall: secs(limits.write_stall_timeout_secs),
        shutdown_grace: secs(app.config.shutdown_grace_secs),
    };
    let plain = plain_listener.map(|plain| {
        tracing::info!(
            "health and metrics over plain HTTP on {}",
            plain.local_addr().map(|a| a.to_string()).unwrap_or_default()
        );
        let mut routes = crate::api::plain_router(app.clone());
        if metrics_here {
            routes = routes.merge(crate::api::metrics_router(app.clone()));
        }
        let router = observed(routes, &app.metrics);
        tokio::spawn(crate::connections::serve(
            plain,
            None,
            router,
            timeouts,
            stopping.clone().cancelled_owned(),
        ))
    });
    let metrics_server = metrics_listener.map(|listener| {
        tracing::info!(
            "serving /metrics on {}",
            listener.local_addr().map(|a| a.to_string()).unwrap_or_default()
        );
        let router = observed(crate::api::metrics_router(app.clone()), &app.metrics);
        tokio::spawn(crate::connections::serve(
            listener,
            None,
            router,
            timeouts,
            stopping.clone().cancelled_owned(),
        ))
    });
    crate::connections::serve(listener, tls, router, timeouts, stopping.cancelled_owned()).await;
    for server in [plain, metrics_server].into_iter().flatten() {
        if let Err(e) = server.await {
            tracing::warn!(error = %e, "a side listener failed");
        }
    }
    let ended = app.registry.end_leases().await;
    if ended > 0 {
        tracing::info!(
            uploads = ended,
            "freed the upload sessions of requests cut by the shutdown"
        );
    }
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

/// Fans SIGHUP out to everything that reloads without a restart: each part
/// keeps a clone of the receiver and reloads when it changes (the TLS
/// certificate, the log level).
fn reload_signal() -> anyhow::Result<watch::Receiver<()>> {
    let (sender, receiver) = watch::channel(());
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading");
                sender.send_replace(());
            }
        });
    }
    #[cfg(not(unix))]
    drop(sender);
    Ok(receiver)
}

/// How often the rate limiters forget clients they have not seen for a while.
const LIMITER_CLEANUP_SECS: u64 = 60;

/// `routes` with what every request leaves behind (request id, access log
/// line, HTTP metrics) around a panic guard.
fn observed(routes: axum::Router, metrics: &Arc<Metrics>) -> axum::Router {
    routes
        .layer(CatchPanicLayer::new())
        .layer(axum::middleware::from_fn_with_state(
            metrics.clone(),
            crate::observe::observe,
        ))
}

/// Reads the configuration again on every SIGHUP and applies its log level;
/// a configuration that no longer loads changes nothing.
fn spawn_reload_on_hangup(app: Arc<App>, source: ConfigSource, mut reload: watch::Receiver<()>) {
    tokio::spawn(async move {
        while reload.changed().await.is_ok() {
            match Config::load(source.file.as_deref(), source.overrides.clone()) {
                Ok(config) => match app.log.set(&config.log.level) {
                    Ok(()) => tracing::info!(level = %config.log.level, "SIGHUP: configuration read again"),
                    Err(e) => tracing::warn!(error = %e, "SIGHUP: log level not changed"),
                },
                Err(e) => tracing::warn!(error = %e, "SIGHUP: the configuration does not load; nothing changed"),
            }
        }
    });
}

/// Keeps the storage gauges of `/metrics` current.
fn spawn_usage_refresh(app: Arc<App>) {
    if !app.config.metrics.enabled {
        return;
    }
    let namespaces = app.config.metrics.namespaces.clone();
    let interval = app.config.metrics.usage_interval_secs;
    let first = app.clone();
    let namespaces_first = namespaces.clone();
    // Once at start, so that the gauges exist before the first period ends.
    tokio::spawn(async move { refresh_usage(&first, &namespaces_first).await });
    every(interval, move || {
        let app = app.clone();
        let namespaces = namespaces.clone();
        async move { refresh_usage(&app, &namespaces).await }
    });
}

async fn refresh_usage(app: &App, namespaces: &[String]) {
    if app.config.metrics.usage_interval_secs == 0 {
        return;
    }
    let now_secs = app.clock.now_ms() / 1000;
    if let Err(e) = crate::metrics::usage::refresh(&app.metrics, app.meta.as_ref(), namespaces, now_secs).await {
        tracing::warn!(error = %e, "computing the storage gauges failed; will retry");
    }
    if app.webhooks.active() {
        if let Err(e) = app.webhooks.count_queued().await {
            tracing::warn!(error = %e, "counting the webhook queues failed; will retry");
        }
    }
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
                    let started = std::time::Instant::now();
                    let result = app.lifecycle.run(None, scope, actor).await;
                    let job = if scope == Scope::Expiry {
                        Job::Expiry
                    } else {
                        Job::Retention
                    };
                    app.metrics.job_run(
                        job,
                        started.elapsed(),
                        result.as_ref().ok().map(|s| JobOutcome {
                            removed: vec![("tags", s.tags_deleted), ("manifests", s.manifests_deleted)],
                            bytes: 0,
                        }),
                        app.clock.now_ms() / 1000,
                    );
                    match result {
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
                    let started = std::time::Instant::now();
                    let result = crate::proxy::evict::evict_over_cap(&app.lifecycle, &app.registry, cap).await;
                    app.metrics.job_run(
                        Job::CacheEviction,
                        started.elapsed(),
                        result.as_ref().ok().map(|e| JobOutcome {
                            removed: vec![("images", e.images_evicted)],
                            bytes: e.bytes_evicted,
                        }),
                        app.clock.now_ms() / 1000,
                    );
                    match result {
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
                let started = std::time::Instant::now();
                let result = app
                    .lifecycle
                    .collect_garbage(false, |line| tracing::debug!("gc: {line}"))
                    .await;
                app.metrics.job_run(
                    Job::Gc,
                    started.elapsed(),
                    result.as_ref().ok().map(|r| JobOutcome {
                        removed: vec![
                            ("blobs", r.blobs_removed),
                            ("manifests", r.manifests_removed),
                            ("orphan_files", r.orphan_files_removed),
                        ],
                        bytes: r.bytes_reclaimed,
                    }),
                    app.clock.now_ms() / 1000,
                );
                match result {
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
