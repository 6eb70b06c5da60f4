//! The `[proxy]` and `[registry]` sections: which upstream registries Berth
//! caches, how it reaches them, and whether it takes pushes at all.
//!
//! Data only; `proxy::Proxy` turns it into clients and routes and says what
//! is wrong with it.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `[registry]`: what the `/v2/` API is for.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
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

/// What the `/v2/` API is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RegistryMode {
    Registry,
    Mirror,
}

/// `[proxy]`: pull-through caching of upstream registries.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
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
    /// How long connecting to an upstream may take (each upstream may set
    /// its own).
    pub connect_timeout_secs: u64,
    /// Longest wait for the next bytes of an upstream's response (each
    /// upstream may set its own).
    pub read_timeout_secs: u64,
    /// The upstream registries pulled through.
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
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// The upstream's name in logs, metrics and the admin API.
    #[schemars(example = &"hub", extend("x-required" = true))]
    pub name: String,
    /// Where its `/v2/` API is: `https://host[:port]` or `http://…`.
    #[schemars(example = &"https://registry-1.docker.io", extend("x-required" = true))]
    pub url: String,
    /// The registry host clients name in-path (`/v2/<host>/…`) and with
    /// containerd's `?ns=<host>`, such as `docker.io` for an upstream whose
    /// URL is another host. Default: the URL's `host[:port]`.
    #[schemars(example = &"docker.io")]
    pub host: Option<String>,
    /// The repository prefix its images appear under (`hub` serves
    /// `hub/library/alpine`); may have several components. Default: `name`.
    #[schemars(example = &"hub")]
    pub prefix: Option<String>,
    /// Docker Hub's rule, `alpine` → `library/alpine`. Default: on when the
    /// host is `docker.io`.
    pub library_prefix: Option<bool>,
    /// The user name to log in to the upstream with; goes with a password.
    pub username: Option<String>,
    /// The password, or read it from `password_file` (trailing newline dropped).
    pub password: Option<Secret>,
    /// A file holding the password (instead of `password`).
    #[schemars(example = &"/run/secrets/hub-password")]
    pub password_file: Option<PathBuf>,
    /// Accept any certificate (a test upstream; never in production).
    pub insecure_skip_verify: bool,
    /// PEM certificates trusted besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate and key, for upstreams requiring mutual TLS.
    pub client_cert_file: Option<PathBuf>,
    /// The PEM key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// How long connecting may take. Default: `proxy.connect_timeout_secs`.
    #[schemars(example = 10)]
    pub connect_timeout_secs: Option<u64>,
    /// Longest wait for the next bytes of a response. Default:
    /// `proxy.read_timeout_secs`.
    #[schemars(example = 60)]
    pub read_timeout_secs: Option<u64>,
    /// At most this many requests to the upstream at once; 0: no limit.
    pub max_concurrent_requests: usize,
}

/// `[[proxy.virtual]]`: a repository prefix that resolves pulls across
/// `members` (repository prefixes, local or remote) in order, first hit
/// wins, and sends pushes to `push_to`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct VirtualConfig {
    /// The repository prefix clients pull from (`all` serves `all/alpine`).
    #[schemars(example = &"all", extend("x-required" = true))]
    pub name: String,
    /// Repository prefixes tried in order; the first that has the image answers.
    #[schemars(example = &["local", "hub"])]
    pub members: Vec<String>,
    /// The local member pushes go to; none: pushes are refused.
    #[schemars(example = &"local")]
    pub push_to: Option<String>,
}

/// A password from the configuration: printed as `***` by `Debug`, so that a
/// logged configuration never shows it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}
