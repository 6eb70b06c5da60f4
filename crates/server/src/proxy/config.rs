//! The `[proxy]` and `[registry]` sections: which upstream registries Berth
//! caches, how it reaches them, and whether it takes pushes at all.
//!
//! Data only; `proxy::Proxy` turns it into clients and routes and says what
//! is wrong with it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[registry]`: what the `/v2/` API is for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// `registry` (pushes and pulls, remote repositories pulled through) or
    /// `mirror` (a pull-only cache: every push and delete is refused).
    pub mode: RegistryMode,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            mode: RegistryMode::Registry,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryMode {
    Registry,
    Mirror,
}

/// `[proxy]`: pull-through caching of upstream registries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Never contact an upstream: serve what the cache holds (an air-gapped edge).
    pub offline: bool,
    /// Pull through from any host named in the path (`/v2/<host>/<name>/…`)
    /// or by containerd's `?ns=`, anonymously over HTTPS, not only from
    /// configured upstreams.
    pub allow_any_upstream: bool,
    /// Networks that upstream requests may reach although they are loopback,
    /// private, link-local or otherwise internal (CIDR notation). Applies to
    /// hosts only `allow_any_upstream` lets in and to every redirect.
    pub allowed_networks: Vec<String>,
    /// How long a cached tag is served before the upstream is asked again
    /// whether it moved.
    pub freshness_secs: u64,
    /// Keep serving a cached image whose tag the upstream no longer knows.
    pub serve_deleted: bool,
    /// The most bytes of cached blobs to keep; least recently pulled cached
    /// images are evicted beyond it. 0: no cap.
    pub max_bytes: u64,
    /// How often the cap is checked (with `max_bytes` set); 0: never on a schedule.
    pub evict_interval_secs: u64,
    /// Defaults for every upstream's connect and read timeouts.
    pub connect_timeout_secs: u64,
    pub read_timeout_secs: u64,
    pub upstreams: Vec<UpstreamConfig>,
    /// Names that resolve pulls across an ordered list of repositories.
    #[serde(rename = "virtual")]
    pub virtuals: Vec<VirtualConfig>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            offline: false,
            allow_any_upstream: false,
            allowed_networks: Vec::new(),
            freshness_secs: 300,
            serve_deleted: true,
            max_bytes: 0,
            evict_interval_secs: 300,
            connect_timeout_secs: 10,
            read_timeout_secs: 60,
            upstreams: Vec::new(),
            virtuals: Vec::new(),
        }
    }
}

/// `[[proxy.upstreams]]`: one upstream registry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// The upstream's name in logs, metrics and the admin API.
    pub name: String,
    /// Where its `/v2/` API is: `https://host[:port]` or `http://…`.
    pub url: String,
    /// The registry host clients name in-path (`/v2/<host>/…`) and with
    /// containerd's `?ns=<host>`, such as `docker.io` for an upstream whose
    /// URL is another host. Default: the URL's `host[:port]`.
    pub host: Option<String>,
    /// The repository prefix its images appear under (`hub` serves
    /// `hub/library/alpine`); may have several components. Default: `name`.
    pub prefix: Option<String>,
    /// Docker Hub's rule, `alpine` → `library/alpine`. Default: on when the
    /// host is `docker.io`.
    pub library_prefix: Option<bool>,
    pub username: Option<String>,
    /// The password, or read it from `password_file` (trailing newline dropped).
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    /// Accept any certificate (a test upstream; never in production).
    pub insecure_skip_verify: bool,
    /// PEM certificates trusted besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate and key, for upstreams requiring mutual TLS.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub connect_timeout_secs: Option<u64>,
    pub read_timeout_secs: Option<u64>,
    /// At most this many requests to the upstream at once; 0: no limit.
    pub max_concurrent_requests: usize,
}

/// `[[proxy.virtual]]`: a repository prefix that resolves pulls across
/// `members` (repository prefixes, local or remote) in order, first hit
/// wins, and sends pushes to `push_to`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VirtualConfig {
    pub name: String,
    pub members: Vec<String>,
    /// The local member pushes go to; none: pushes are refused.
    pub push_to: Option<String>,
}

/// A password from the configuration: printed as `***` by `Debug`, so that a
/// logged configuration never shows it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}
