//! The client of one upstream registry: TLS as configured, credentials
//! (Basic, or the Docker bearer-token flow against the upstream's own realm
//! with a token cache per scope), a limit of concurrent requests, back-off
//! after a 429, and redirects followed only where the SSRF guard allows.
//!
//! It speaks the distribution API's reads and nothing else; what to do
//! with an answer (cache it, serve stale) is `proxy`'s business.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_oci::{media_type, Digest};
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use reqwest::header::{HeaderMap, ACCEPT, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::config::UpstreamConfig;
use super::ssrf::{self, NetworkPolicy};

/// Every manifest type the cache stores, asked for on every manifest request
/// so that the upstream answers with what it holds and never converts.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.oci.artifact.manifest.v1+json;q=0.5";

/// How long a token without `expires_in` is used (the distribution token
/// spec's default lifetime is 60 seconds).
const DEFAULT_TOKEN_SECS: u64 = 60;
/// How long an upstream that answered 429 without `Retry-After` is left alone.
const DEFAULT_BACKOFF: Duration = Duration::from_secs(30);
/// The longest back-off a `Retry-After` can ask for.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Redirects followed for one request.
const MAX_REDIRECTS: usize = 10;

/// Why an upstream request did not give an answer to use.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream says the thing does not exist.
    #[error("upstream {upstream} does not have it")]
    NotFound { upstream: String },
    /// The upstream could not be reached, timed out, failed (5xx) or asked
    /// to be left alone (429): cached content may be served instead.
    #[error("upstream {upstream} is unavailable: {reason}")]
    Unavailable { upstream: String, reason: String },
    /// The upstream refused this registry's credentials.
    #[error("upstream {upstream} refused access: {reason}")]
    Denied { upstream: String, reason: String },
    /// The upstream answered with something that is not what was asked for.
    #[error("upstream {upstream} sent an invalid answer: {reason}")]
    Invalid { upstream: String, reason: String },
}

impl UpstreamError {
    /// Whether cached content should be served in its place.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, UpstreamError::Unavailable { .. })
    }
}

/// Why an upstream's configuration cannot work.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamConfigError {
    #[error("upstream {name:?}: {reason}")]
    Invalid { name: String, reason: String },
}

/// A response whose body is still to be read, with the request slot it holds.
pub struct Answer {
    pub headers: HeaderMap,
    pub response: reqwest::Response,
    /// Held until the body is read: the concurrency limit counts transfers.
    permit: Option<OwnedSemaphorePermit>,
}

impl Answer {
    /// The body as a stream of chunks, holding the request slot until it ends.
    pub fn into_stream(self) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        let permit = self.permit;
        self.response.bytes_stream().map(move |chunk| {
            let _held = &permit;
            chunk.map_err(std::io::Error::other)
        })
    }

    /// The declared body length.
    pub fn content_length(&self) -> Option<u64> {
        self.headers
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    }
}

/// The client of one upstream registry.
pub struct UpstreamClient {
    name: String,
    /// The URL of `/v2/` (always ends with `/v2/`).
    base: Url,
    /// Requests to the upstream itself; never follows redirects.
    direct: reqwest::Client,
    /// Requests to where the upstream redirects: the SSRF guard applies.
    guarded: reqwest::Client,
    policy: Arc<NetworkPolicy>,
    /// Whether the upstream's own address is checked too (a host that only
    /// `allow_any_upstream` lets in).
    guard_upstream: bool,
    credentials: Option<(String, String)>,
    /// Bearer tokens by scope, with when they run out.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    /// Set when the upstream asked for Basic credentials.
    wants_basic: std::sync::atomic::AtomicBool,
    permits: Option<Arc<Semaphore>>,
    /// Until when the upstream is left alone after a 429.
    backoff_until: Mutex<Option<Instant>>,
}

/// Timeouts that apply when an upstream's own section names none.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
}

impl UpstreamClient {
    /// The client of a configured upstream.
    pub fn configured(
        config: &UpstreamConfig,
        defaults: Timeouts,
        policy: Arc<NetworkPolicy>,
    ) -> Result<UpstreamClient, UpstreamConfigError> {
        let invalid = |reason: String| UpstreamConfigError::Invalid {
            name: config.name.clone(),
            reason,
        };
        let base = base_url(&config.url).map_err(invalid)?;
        let timeouts = Timeouts {
            connect: config
                .connect_timeout_secs
                .map_or(defaults.connect, Duration::from_secs),
            read: config.read_timeout_secs.map_or(defaults.read, Duration::from_secs),
        };
        // The upstream's own host is trusted (an admin named it); the guard
        // still applies to anything else this client is sent to (a token
        // realm elsewhere). Redirects are followed by `guarded`, below.
        let host = base.host_str().unwrap_or_default().to_string();
        let trusting = Arc::new(policy.as_ref().clone().trusting([host]));
        let mut builder = ssrf::guarded_client_builder(trusting, timeouts.connect, timeouts.read)
            .redirect(reqwest::redirect::Policy::none())
            .danger_accept_invalid_certs(config.insecure_skip_verify);
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).map_err(|e| invalid(format!("ca_file {}: {e}", ca.display())))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| invalid(format!("ca_file {}: {e}", ca.display())))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        match (&config.client_cert_file, &config.client_key_file) {
            (Some(cert), Some(key)) => {
                let mut pem =
                    std::fs::read(cert).map_err(|e| invalid(format!("client_cert_file {}: {e}", cert.display())))?;
                pem.push(b'\n');
                pem.extend(std::fs::read(key).map_err(|e| invalid(format!("client_key_file {}: {e}", key.display())))?);
                let identity = reqwest::Identity::from_pem(&pem)
                    .map_err(|e| invalid(format!("client certificate or key: {e}")))?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => return Err(invalid("client_cert_file and client_key_file go together".into())),
        }
        let direct = builder.build().map_err(|e| invalid(e.to_string()))?;
        let password = match (&config.password, &config.password_file) {
            (Some(p), None) => Some(p.0.clone()),
            (None, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .map_err(|e| invalid(format!("password_file {}: {e}", file.display())))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            (None, None) => None,
            (Some(_), Some(_)) => return Err(invalid("give password or password_file, not both".into())),
        };
        let credentials = match (&config.username, password) {
            (Some(user), Some(password)) => Some((user.clone(), password)),
            (None, None) => None,
            _ => return Err(invalid("username and password go together".into())),
        };
        let guarded = ssrf::guarded_client(policy.clone(), timeouts.connect, timeouts.read)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(UpstreamClient {
            name: config.name.clone(),
            base,
            direct,
            guarded,
            policy,
            guard_upstream: false,
            credentials,
            tokens: Mutex::new(HashMap::new()),
            wants_basic: false.into(),
            permits: (config.max_concurrent_requests > 0)
                .then(|| Arc::new(Semaphore::new(config.max_concurrent_requests))),
            backoff_until: Mutex::new(None),
        })
    }

    /// The client of a host that only `allow_any_upstream` lets in:
    /// anonymous HTTPS, every address checked.
    pub fn any_host(host: &str, timeouts: Timeouts, policy: Arc<NetworkPolicy>) -> reqwest::Result<UpstreamClient> {
        // Docker Hub's API is not on the host its images are named by.
        let api_host = if host == "docker.io" {
            "registry-1.docker.io"
        } else {
            host
        };
        let guarded = ssrf::guarded_client(policy.clone(), timeouts.connect, timeouts.read)?;
        let base = base_url(&format!("https://{api_host}")).unwrap_or_else(|_| {
            // A host that fits a repository name's first component always makes a URL.
            Url::parse("https://invalid.invalid/v2/").expect("a constant URL parses")
        });
        Ok(UpstreamClient {
            name: host.to_string(),
            base,
            direct: guarded.clone(),
            guarded,
            policy,
            guard_upstream: true,
            credentials: None,
            tokens: Mutex::new(HashMap::new()),
            wants_basic: false.into(),
            permits: None,
            backoff_until: Mutex::new(None),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The upstream's `/v2/` URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The digest of the manifest `reference` names at the upstream, from a
    /// `HEAD`; `None` when the upstream does not say (then a `GET` must).
    pub async fn head_manifest(&self, path: &str, reference: &str) -> Result<Option<Digest>, UpstreamError> {
        let answer = self
            .send(Method::HEAD, path, &format!("manifests/{reference}"), MANIFEST_ACCEPT)
            .await?;
        Ok(answer
            .headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()))
    }

    /// The manifest `reference` names: its bytes exactly as sent, and its
    /// media type. Bodies longer than `limit` are refused (a never-ending
    /// body ends there).
    pub async fn get_manifest(
        &self,
        path: &str,
        reference: &str,
        limit: usize,
    ) -> Result<(Vec<u8>, Option<String>), UpstreamError> {
        let answer = self
            .send(Method::GET, path, &format!("manifests/{reference}"), MANIFEST_ACCEPT)
            .await?;
        let content_type = answer
            .headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
        if content_type.as_deref().is_some_and(|t| t.starts_with("text/html")) {
            return Err(self.invalid("an HTML page instead of a manifest".into()));
        }
        if answer.content_length().is_some_and(|len| len > limit as u64) {
            return Err(self.invalid(format!("a manifest larger than the {limit}-byte limit")));
        }
        let body = self.read_limited(answer, limit).await?;
        Ok((body, content_type))
    }

    /// The size of a blob at the upstream, from a `HEAD`.
    pub async fn head_blob(&self, path: &str, digest: &Digest) -> Result<u64, UpstreamError> {
        let answer = self.send(Method::HEAD, path, &format!("blobs/{digest}"), "*/*").await?;
        answer
            .content_length()
            .ok_or_else(|| self.invalid("a blob HEAD without a Content-Length".into()))
    }

    /// A blob's bytes, following a redirect to where they are stored.
    pub async fn get_blob(&self, path: &str, digest: &Digest) -> Result<Answer, UpstreamError> {
        self.send(Method::GET, path, &format!("blobs/{digest}"), "*/*").await
    }

    /// The upstream's tags of `path`, following `Link` pages up to `max` tags.
    pub async fn list_tags(&self, path: &str, max: usize) -> Result<Vec<String>, UpstreamError> {
        #[derive(serde::Deserialize)]
        struct TagList {
            tags: Option<Vec<String>>,
        }
        let mut tags = Vec::new();
        let mut endpoint = "tags/list?n=1000".to_string();
        loop {
            let answer = self.send(Method::GET, path, &endpoint, "application/json").await?;
            let next = next_link(&answer.headers);
            let body = self.read_limited(answer, 4 << 20).await?;
            let page: TagList =
                serde_json::from_slice(&body).map_err(|e| self.invalid(format!("a tag list that is not JSON: {e}")))?;
            tags.extend(page.tags.unwrap_or_default());
            match next {
                Some(query) if tags.len() < max => endpoint = format!("tags/list?{query}"),
                _ => break,
            }
        }
        tags.truncate(max);
        Ok(tags)
    }

    /// The upstream's referrers index of `digest`, or `None` when it has no
    /// referrers API (a 404, which distribution-spec says means that).
    pub async fn referrers(&self, path: &str, digest: &Digest) -> Result<Option<Vec<u8>>, UpstreamError> {
        match self
            .send(Method::GET, path, &format!("referrers/{digest}"), media_type::OCI_INDEX)
            .await
        {
            Ok(answer) => Ok(Some(self.read_limited(answer, 4 << 20).await?)),
            Err(UpstreamError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn read_limited(&self, answer: Answer, limit: usize) -> Result<Vec<u8>, UpstreamError> {
        let mut body = Vec::new();
        let mut stream = Box::pin(answer.into_stream());
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.unavailable(format!("reading the answer failed: {e}")))?;
            if body.len() + chunk.len() > limit {
                return Err(self.invalid(format!("an answer longer than {limit} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Sends `method` to `/v2/<path>/<endpoint>`, signing in as the upstream
    /// asks, and returns a 200 answer (after redirects), or why there is none.
    async fn send(&self, method: Method, path: &str, endpoint: &str, accept: &str) -> Result<Answer, UpstreamError> {
        self.check_backoff()?;
        let url = self
            .base
            .join(&format!("{path}/{endpoint}"))
            .map_err(|e| self.invalid(format!("cannot make a URL of {path}/{endpoint}: {e}")))?;
        if self.guard_upstream {
            ssrf::check_url(&self.policy, &url).map_err(|e| self.denied_address(e.to_string()))?;
        }
        let permit = match &self.permits {
            Some(permits) => Some(
                permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| self.unavailable("shutting down".into()))?,
            ),
            None => None,
        };
        let scope = format!("repository:{path}:pull");
        let mut response = self.request(&method, &url, accept, &scope).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            let challenge = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            self.sign_in(challenge.as_deref(), &scope).await?;
            response = self.request(&method, &url, accept, &scope).await?;
        }
        let response = self.follow_redirects(&method, response).await?;
        let status = response.status();
        match status {
            s if s.is_success() => Ok(Answer {
                headers: response.headers().clone(),
                response,
                permit,
            }),
            StatusCode::NOT_FOUND => Err(UpstreamError::NotFound {
                upstream: self.name.clone(),
            }),
            StatusCode::TOO_MANY_REQUESTS => {
                let wait = retry_after(response.headers())
                    .unwrap_or(DEFAULT_BACKOFF)
                    .min(MAX_BACKOFF);
                self.back_off(wait);
                Err(self.unavailable(format!(
                    "429 Too Many Requests; leaving it alone for {}s",
                    wait.as_secs()
                )))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(UpstreamError::Denied {
                upstream: self.name.clone(),
                reason: format!("{status}"),
            }),
            s if s.is_server_error() => Err(self.unavailable(format!("{status}"))),
            s => Err(self.invalid(format!("{s}"))),
        }
    }

    /// One request to the upstream, with the credentials it last asked for.
    async fn request(
        &self,
        method: &Method,
        url: &Url,
        accept: &str,
        scope: &str,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut request = self.direct.request(method.clone(), url.clone()).header(ACCEPT, accept);
        if let Some(token) = self.token(scope) {
            request = request.bearer_auth(token);
        } else if let Some((user, password)) = self.credentials.as_ref().filter(|_| self.basic_wanted()) {
            request = request.basic_auth(user, Some(password));
        }
        request.send().await.map_err(|e| self.transport(e))
    }

    /// Follows the redirects of an answer through the guarded client, without
    /// this upstream's credentials (a storage URL carries its own).
    async fn follow_redirects(
        &self,
        method: &Method,
        mut response: reqwest::Response,
    ) -> Result<reqwest::Response, UpstreamError> {
        for _ in 0..MAX_REDIRECTS {
            if !response.status().is_redirection() {
                return Ok(response);
            }
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| self.invalid(format!("a {} without a Location", response.status())))?;
            let target = response
                .url()
                .join(location)
                .map_err(|e| self.invalid(format!("a redirect to {location:?}: {e}")))?;
            ssrf::check_url(&self.policy, &target).map_err(|e| self.denied_address(e.to_string()))?;
            // The guarded client follows any further hops itself, checking each.
            response = self
                .guarded
                .request(method.clone(), target)
                .send()
                .await
                .map_err(|e| self.transport(e))?;
        }
        Err(self.invalid(format!("more than {MAX_REDIRECTS} redirects")))
    }

    /// Answers a 401's challenge: a bearer token from the upstream's realm
    /// (with this registry's credentials, if any), or Basic credentials.
    async fn sign_in(&self, challenge: Option<&str>, scope: &str) -> Result<(), UpstreamError> {
        let denied = |reason: &str| UpstreamError::Denied {
            upstream: self.name.clone(),
            reason: reason.to_string(),
        };
        let challenge = challenge.ok_or_else(|| denied("401 without a WWW-Authenticate challenge"))?;
        let (scheme, params) = parse_challenge(challenge);
        if scheme.eq_ignore_ascii_case("basic") {
            if self.credentials.is_none() {
                return Err(denied("it asks for Basic credentials and none are configured"));
            }
            self.wants_basic.store(true, std::sync::atomic::Ordering::Relaxed);
            return Ok(());
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(denied(&format!("unsupported authentication scheme {scheme:?}")));
        }
        let realm = params
            .get("realm")
            .ok_or_else(|| denied("a Bearer challenge without a realm"))?;
        let mut url = Url::parse(realm).map_err(|e| self.invalid(format!("a token realm {realm:?}: {e}")))?;
        if self.guard_upstream {
            ssrf::check_url(&self.policy, &url).map_err(|e| self.denied_address(e.to_string()))?;
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = params.get("service") {
                query.append_pair("service", service);
            }
            query.append_pair("scope", scope);
        }
        let mut request = self.direct.get(url);
        if let Some((user, password)) = &self.credentials {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await.map_err(|e| self.transport(e))?;
        if !response.status().is_success() {
            return Err(if response.status().is_server_error() {
                self.unavailable(format!("its token service answered {}", response.status()))
            } else {
                denied(&format!("its token service answered {}", response.status()))
            });
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| self.unavailable(format!("reading its token failed: {e}")))?;
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| self.invalid(format!("its token service sent no JSON token: {e}")))?;
        let token = answer
            .token
            .or(answer.access_token)
            .ok_or_else(|| self.invalid("its token service sent no token".into()))?;
        // Renewed a little before it runs out, so a request never carries a dead one.
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(DEFAULT_TOKEN_SECS).max(10));
        let until = Instant::now() + lifetime - Duration::from_secs(5);
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(scope.to_string(), (token, until));
        Ok(())
    }

    fn token(&self, scope: &str) -> Option<String> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        match tokens.get(scope) {
            Some((token, until)) if *until > Instant::now() => Some(token.clone()),
            Some(_) => {
                tokens.remove(scope);
                None
            }
            None => None,
        }
    }

    fn basic_wanted(&self) -> bool {
        self.wants_basic.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Refuses a request while the upstream is backed off after a 429.
    fn check_backoff(&self) -> Result<(), UpstreamError> {
        let until = *self.backoff_until.lock().unwrap_or_else(|p| p.into_inner());
        match until {
            Some(until) if until > Instant::now() => Err(self.unavailable(format!(
                "backing off after a 429 for {}s more",
                (until - Instant::now()).as_secs() + 1
            ))),
            _ => Ok(()),
        }
    }

    fn back_off(&self, wait: Duration) {
        tracing::warn!(upstream = %self.name, seconds = wait.as_secs(), "upstream answered 429; backing off");
        *self.backoff_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + wait);
    }

    fn transport(&self, e: reqwest::Error) -> UpstreamError {
        // The SSRF guard's refusals come through the client as errors too.
        if let Some(refusal) = ssrf::SsrfError::behind(&e) {
            return self.denied_address(refusal.to_string());
        }
        let reason = if e.is_timeout() {
            "timed out".to_string()
        } else if e.is_connect() {
            format!("cannot connect: {}", crate::telemetry::error_chain(&e))
        } else {
            crate::telemetry::error_chain(&e)
        };
        self.unavailable(reason)
    }

    fn unavailable(&self, reason: String) -> UpstreamError {
        UpstreamError::Unavailable {
            upstream: self.name.clone(),
            reason,
        }
    }

    fn invalid(&self, reason: String) -> UpstreamError {
        UpstreamError::Invalid {
            upstream: self.name.clone(),
            reason,
        }
    }

    fn denied_address(&self, reason: String) -> UpstreamError {
        UpstreamError::Denied {
            upstream: self.name.clone(),
            reason,
        }
    }
}

/// The `/v2/` URL of an upstream configured as `url`.
fn base_url(url: &str) -> Result<Url, String> {
    let mut parsed = Url::parse(url).map_err(|e| format!("url {url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("url {url:?}: only http and https upstreams are supported"));
    }
    if parsed.host_str().is_none() {
        return Err(format!("url {url:?} names no host"));
    }
    let path = parsed.path().trim_end_matches('/').trim_end_matches("/v2").to_string();
    parsed.set_path(&format!("{path}/v2/"));
    parsed.set_query(None);
    Ok(parsed)
}

/// A `WWW-Authenticate` challenge's scheme and parameters
/// (`Bearer realm="…",service="…",scope="…"`).
fn parse_challenge(header: &str) -> (String, HashMap<String, String>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.insert(key, value);
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    (scheme.to_string(), params)
}

/// The query of the next page from a `Link: <…?n=…&last=…>; rel="next"` header.
fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get(reqwest::header::LINK)?.to_str().ok()?;
    let target = link.split(';').next()?.trim().strip_prefix('<')?.strip_suffix('>')?;
    target.split_once('?').map(|(_, query)| query.to_string())
}

/// How long a 429's `Retry-After` asks to wait: seconds, or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(std::time::SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn challenges_parse() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.example.test/token",service="registry.example.test",scope="repository:library/alpine:pull""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(params["realm"], "https://auth.example.test/token");
        assert_eq!(params["service"], "registry.example.test");
        assert_eq!(params["scope"], "repository:library/alpine:pull");
        let (scheme, params) = parse_challenge(r#"Basic realm="a \"quoted\" realm", charset=UTF-8"#);
        assert_eq!(scheme, "Basic");
        assert_eq!(params["realm"], r#"a "quoted" realm"#);
        assert_eq!(params["charset"], "UTF-8");
        let (scheme, params) = parse_challenge("Bearer");
        assert_eq!((scheme.as_str(), params.len()), ("Bearer", 0));
        // Hostile input parses to something, never panics.
        for text in [
            "",
            "=",
            "Bearer =\"",
            "Bearer a=\"\\",
            "Bearer ,,,=,",
            "Bearer realm=\"é",
        ] {
            let _ = parse_challenge(text);
        }
    }

    #[test]
    fn base_urls_end_in_v2() {
        assert_eq!(
            base_url("https://r.example.test").unwrap().as_str(),
            "https://r.example.test/v2/"
        );
        assert_eq!(
            base_url("http://127.0.0.1:5000/v2/").unwrap().as_str(),
            "http://127.0.0.1:5000/v2/"
        );
        assert_eq!(
            base_url("https://r.example.test/mirror").unwrap().as_str(),
            "https://r.example.test/mirror/v2/"
        );
        assert!(base_url("ftp://r.example.test").is_err());
        assert!(base_url("not a url").is_err());
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
        headers.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        headers.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    /// `max_concurrent_requests` bounds the requests in flight to one
    /// upstream, whatever the callers do; here the upstream is a server that
    /// records how many requests it holds at once.
    #[tokio::test]
    async fn concurrent_requests_are_limited() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (n, m) = (now.clone(), most.clone());
        let app = axum::Router::new().fallback(move || {
            let (n, m) = (n.clone(), m.clone());
            async move {
                let held = n.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(held, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                n.fetch_sub(1, Ordering::SeqCst);
                ([("content-length", "3")], "abc")
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let config = UpstreamConfig {
            name: "limited".into(),
            url: format!("http://{addr}"),
            max_concurrent_requests: 2,
            ..UpstreamConfig::default()
        };
        let timeouts = Timeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(5),
        };
        let policy = Arc::new(NetworkPolicy::new::<&str>(&[]).unwrap());
        let client = Arc::new(UpstreamClient::configured(&config, timeouts, policy).unwrap());
        let digest = Digest::sha256_of(b"abc");
        let heads = (0..10).map(|_| {
            let client = client.clone();
            let digest = digest.clone();
            tokio::spawn(async move { client.head_blob("a/b", &digest).await })
        });
        for head in futures::future::join_all(heads).await {
            assert_eq!(head.unwrap().unwrap(), 3);
        }
        assert_eq!(
            most.load(Ordering::SeqCst),
            2,
            "never more than two at once, and two were used"
        );
    }

    #[test]
    fn next_links_give_the_query() {
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::LINK,
            HeaderValue::from_static("</v2/library/alpine/tags/list?n=2&last=b>; rel=\"next\""),
        );
        assert_eq!(next_link(&headers).as_deref(), Some("n=2&last=b"));
    }
}
