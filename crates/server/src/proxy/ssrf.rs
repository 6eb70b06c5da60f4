//! The guard that keeps upstream requests away from the registry's own
//! network (server-side request forgery): which addresses an upstream
//! request may reach, and an HTTP client that holds to it.
//!
//! A host that only `proxy.allow_any_upstream` lets in, and every redirect
//! any upstream sends (blob GETs are often redirected to storage), is refused
//! when it resolves to an address of the classes [`Forbidden`] lists, unless
//! `proxy.allowed_networks` lists its network. Configured upstreams may point
//! anywhere, since an admin wrote them: their hosts are *trusted*
//! ([`NetworkPolicy::trusting`]).
//!
//! The client of [`guarded_client`] checks in three places, because each
//! sees what the others cannot:
//!
//! - its resolver ([`GuardedResolver`]) drops forbidden addresses from every
//!   name it resolves; reqwest connects to exactly the addresses the resolver
//!   returns, so a name that resolves to a public address for a check and to
//!   a private one for the connection (DNS rebinding) gains nothing;
//! - its redirect policy refuses a redirect to an IP-literal host the policy
//!   forbids (IP literals never reach a resolver), to a scheme other than
//!   http(s), and after [`MAX_REDIRECTS`] hops;
//! - a layer over its connector checks the address each connection was
//!   actually made to, and refuses a forbidden one before a byte of the
//!   request is sent. It is what stops a first request to an IP literal; for
//!   https the TLS handshake has happened by then, so callers should still
//!   run [`check_url`] on a URL before requesting it.
//!
//! This module decides reachability only; which upstreams exist and what
//! Berth asks them for belong elsewhere in `proxy`.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::Extensions;
use hyper_util::client::legacy::connect::{Connection, HttpInfo};
use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect;
use reqwest::Url;

/// How many redirects one request follows before it fails.
pub const MAX_REDIRECTS: usize = 10;

/// Why an upstream request may not reach an address.
///
/// The classes, and why each is out of reach:
/// - `Unspecified`: 0.0.0.0/8 ("this network") and `::`. Linux connects
///   0.0.0.0 to the local host.
/// - `Loopback`: 127.0.0.0/8 and `::1`, the registry's own host: its admin
///   API, metrics, a database listening locally.
/// - `Private`: RFC 1918 (10/8, 172.16/12, 192.168/16), IPv6 unique local
///   addresses (fc00::/7) and the deprecated site-local fec0::/10: the
///   internal network the registry runs in.
/// - `SharedAddressSpace`: 100.64.0.0/10 (RFC 6598), carrier and cloud
///   internal networks; Alibaba Cloud's metadata service is at 100.100.100.200.
/// - `LinkLocal`: 169.254.0.0/16, where clouds serve instance metadata and
///   credentials (169.254.169.254), and fe80::/10.
/// - `Multicast`: 224.0.0.0/4 and ff00::/8: never an HTTP server.
/// - `Broadcast`: 255.255.255.255.
///
/// An IPv6 address that carries an IPv4 address (IPv4-mapped ::ffff:0:0/96,
/// IPv4-compatible ::/96, NAT64 64:ff9b::/96) is judged by the IPv4 address,
/// since that is where a dual-stack socket or a NAT64 gateway sends it:
/// `::ffff:127.0.0.1` is loopback. (6to4 and Teredo are deprecated and no
/// longer routed; they are not unpacked.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forbidden {
    Unspecified,
    Loopback,
    Private,
    SharedAddressSpace,
    LinkLocal,
    Multicast,
    Broadcast,
}

impl fmt::Display for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Forbidden::Unspecified => "unspecified",
            Forbidden::Loopback => "loopback",
            Forbidden::Private => "private",
            Forbidden::SharedAddressSpace => "shared (carrier-grade NAT)",
            Forbidden::LinkLocal => "link-local",
            Forbidden::Multicast => "multicast",
            Forbidden::Broadcast => "broadcast",
        })
    }
}

impl Forbidden {
    /// The class that puts `ip` out of reach, or `None` for an address
    /// upstream requests may reach.
    pub fn of(ip: IpAddr) -> Option<Forbidden> {
        match ip {
            IpAddr::V4(v4) => Forbidden::of_v4(v4),
            IpAddr::V6(v6) => match embedded_v4(v6) {
                Some(v4) => Forbidden::of_v4(v4),
                None => Forbidden::of_v6(v6),
            },
        }
    }

    fn of_v4(ip: Ipv4Addr) -> Option<Forbidden> {
        let [a, b, ..] = ip.octets();
        if a == 0 {
            Some(Forbidden::Unspecified)
        } else if ip.is_loopback() {
            Some(Forbidden::Loopback)
        } else if ip.is_private() {
            Some(Forbidden::Private)
        } else if a == 100 && (64..128).contains(&b) {
            Some(Forbidden::SharedAddressSpace)
        } else if ip.is_link_local() {
            Some(Forbidden::LinkLocal)
        } else if ip.is_multicast() {
            Some(Forbidden::Multicast)
        } else if ip.is_broadcast() {
            Some(Forbidden::Broadcast)
        } else {
            None
        }
    }

    fn of_v6(ip: Ipv6Addr) -> Option<Forbidden> {
        let first = ip.segments()[0];
        if ip.is_unspecified() {
            Some(Forbidden::Unspecified)
        } else if ip.is_loopback() {
            Some(Forbidden::Loopback)
        } else if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfec0 {
            Some(Forbidden::Private)
        } else if first & 0xffc0 == 0xfe80 {
            Some(Forbidden::LinkLocal)
        } else if ip.is_multicast() {
            Some(Forbidden::Multicast)
        } else {
            None
        }
    }
}

/// The IPv4 address an IPv6 address carries: IPv4-mapped (::ffff:a.b.c.d),
/// IPv4-compatible (::a.b.c.d, but not `::` and `::1`, which are IPv6's own
/// unspecified and loopback addresses) or NAT64 (64:ff9b::a.b.c.d).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if ip.is_unspecified() || ip.is_loopback() {
        return None;
    }
    let s = ip.segments();
    let low = Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7]));
    match s[..6] {
        [0, 0, 0, 0, 0, 0xffff] | [0, 0, 0, 0, 0, 0] | [0x64, 0xff9b, 0, 0, 0, 0] => Some(low),
        _ => None,
    }
}

/// Which addresses upstream requests may reach: every address but the
/// [`Forbidden`] classes, plus the networks of `proxy.allowed_networks`,
/// plus the hosts of configured upstreams.
#[derive(Debug, Clone, Default)]
pub struct NetworkPolicy {
    allowed: Vec<IpNet>,
    trusted_names: HashSet<String>,
    trusted_ips: HashSet<IpAddr>,
}

impl NetworkPolicy {
    /// A policy that also permits the `allowed_networks`: CIDR networks
    /// (`10.0.0.0/8`, `fd00::/8`) or single addresses (`127.0.0.1`).
    pub fn new<S: AsRef<str>>(allowed_networks: &[S]) -> Result<NetworkPolicy, SsrfError> {
        let allowed = allowed_networks
            .iter()
            .map(|text| {
                let text = text.as_ref().trim();
                text.parse::<IpNet>()
                    .map(|net| net.trunc())
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| SsrfError::InvalidNetwork(text.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(NetworkPolicy {
            allowed,
            ..NetworkPolicy::default()
        })
    }

    /// This policy, trusting `hosts` (names or IP literals, as in the URLs of
    /// configured upstreams): they may be reached whatever they resolve to,
    /// by a first request and by a redirect alike (a resolver cannot tell the
    /// two apart, and the admin named these hosts).
    pub fn trusting<I, S>(mut self, hosts: I) -> NetworkPolicy
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for host in hosts {
            let host = normalize_host(host.as_ref());
            match host.parse::<IpAddr>() {
                Ok(ip) => self.trusted_ips.insert(ip),
                Err(_) => self.trusted_names.insert(host),
            };
        }
        self
    }

    /// Whether upstream requests may reach `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.refusal(ip).is_none()
    }

    /// Why upstream requests may not reach `ip`, or `None` when they may.
    pub fn refusal(&self, ip: IpAddr) -> Option<Forbidden> {
        let class = Forbidden::of(ip)?;
        let carried = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let listed = self
            .allowed
            .iter()
            .any(|net| net.contains(&ip) || carried.is_some_and(|v4| net.contains(&v4)));
        (!listed).then_some(class)
    }

    /// Whether `host` (a name or an IP literal) is one of the trusted hosts.
    pub fn trusts_host(&self, host: &str) -> bool {
        let host = normalize_host(host);
        match host.parse::<IpAddr>() {
            Ok(ip) => self.trusted_ips.contains(&ip),
            Err(_) => self.trusted_names.contains(&host),
        }
    }
}

/// `host` as hosts are compared: lowercase, without IPv6 brackets or the
/// trailing dot of a fully qualified name.
fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// Why the guard refused an upstream request.
///
/// Messages name a URL by its origin only: a redirect to storage carries
/// credentials in its query.
#[derive(Debug, thiserror::Error)]
pub enum SsrfError {
    #[error("proxy.allowed_networks: {0:?} is not a network such as 10.0.0.0/8 or fd00::/8, nor an address")]
    InvalidNetwork(String),
    #[error(
        "{host} resolves only to addresses upstream requests may not reach: {}",
        list(refused)
    )]
    NoPermittedAddress {
        host: String,
        refused: Vec<(IpAddr, Forbidden)>,
    },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin} ({class} address) is out of reach of upstream requests unless proxy.allowed_networks lists it")]
    ForbiddenAddress { origin: String, class: Forbidden },
    #[error("connected to {peer} ({class} address), which is out of reach of upstream requests unless proxy.allowed_networks lists it")]
    ForbiddenPeer { peer: IpAddr, class: Forbidden },
    #[error("the connection does not tell the address it was made to, so it cannot be checked")]
    UnknownPeer,
    #[error("a {scheme}: URL: upstream requests go over http or https only")]
    Scheme { scheme: String },
    #[error("{origin}: the URL has no host")]
    NoHost { origin: String },
    #[error("more than {MAX_REDIRECTS} redirects, the last to {origin}: a redirect loop?")]
    TooManyRedirects { origin: String },
}

fn list(refused: &[(IpAddr, Forbidden)]) -> String {
    let items: Vec<String> = refused.iter().map(|(ip, class)| format!("{ip} ({class})")).collect();
    items.join(", ")
}

impl SsrfError {
    /// The guard's refusal behind a failed request, if the guard refused it.
    pub fn behind(err: &reqwest::Error) -> Option<&SsrfError> {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = source {
            if let Some(refusal) = e.downcast_ref::<SsrfError>() {
                return Some(refusal);
            }
            source = e.source();
        }
        None
    }
}

/// The origin of an http(s) `url` (`https://host:port`), which names it in messages.
fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// Checks what can be checked of `url` before it is requested: an http(s)
/// scheme, a host, and, when the host is an IP literal, that the policy
/// permits or trusts it. Names are checked when they are resolved.
pub fn check_url(policy: &NetworkPolicy, url: &Url) -> Result<(), SsrfError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(SsrfError::Scheme {
            scheme: url.scheme().to_string(),
        });
    }
    let Some(host) = url.host_str() else {
        return Err(SsrfError::NoHost { origin: origin(url) });
    };
    // The URL parser has already turned every IPv4 spelling (2130706433,
    // 0x7f.1) into dotted decimal, and IPv6 hosts come in brackets.
    let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let Ok(ip) = literal.parse::<IpAddr>() else {
        // A name: the resolver checks what it resolves to.
        return Ok(());
    };
    if policy.trusted_ips.contains(&ip) {
        return Ok(());
    }
    match policy.refusal(ip) {
        None => Ok(()),
        Some(class) => Err(SsrfError::ForbiddenAddress {
            origin: origin(url),
            class,
        }),
    }
}

/// What the resolver and the connector layer of one client share: the
/// policy, and the addresses trusted names resolved to (which the connector
/// layer must let through).
#[derive(Debug)]
struct Guard {
    policy: Arc<NetworkPolicy>,
    trusted_peers: Mutex<HashSet<IpAddr>>,
}

impl Guard {
    fn new(policy: Arc<NetworkPolicy>) -> Arc<Guard> {
        Arc::new(Guard {
            policy,
            trusted_peers: Mutex::new(HashSet::new()),
        })
    }

    /// What `host` resolved to, less what the policy forbids; all of it when
    /// the host is trusted (remembered for the connector layer).
    fn screen(&self, host: &str, found: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, SsrfError> {
        if found.is_empty() {
            return Err(SsrfError::NoAddress { host: host.to_string() });
        }
        if self.policy.trusts_host(host) {
            let mut peers = self.trusted_peers.lock().unwrap_or_else(|p| p.into_inner());
            peers.extend(found.iter().map(|a| a.ip()));
            return Ok(found);
        }
        let (permitted, refused): (Vec<_>, Vec<_>) = found.into_iter().partition(|a| self.policy.permits(a.ip()));
        if permitted.is_empty() {
            let mut refused: Vec<_> = refused
                .into_iter()
                .filter_map(|a| Some((a.ip(), self.policy.refusal(a.ip())?)))
                .collect();
            refused.dedup();
            return Err(SsrfError::NoPermittedAddress {
                host: host.to_string(),
                refused,
            });
        }
        Ok(permitted)
    }

    fn check_peer(&self, peer: IpAddr) -> Result<(), SsrfError> {
        let Some(class) = self.policy.refusal(peer) else {
            return Ok(());
        };
        let trusted = self.policy.trusted_ips.contains(&peer)
            || self
                .trusted_peers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&peer);
        if trusted {
            Ok(())
        } else {
            Err(SsrfError::ForbiddenPeer { peer, class })
        }
    }
}

/// A resolver that resolves with tokio's (the system's) resolver and drops
/// the addresses the policy forbids; it fails when none remain.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    guard: Arc<Guard>,
}

impl GuardedResolver {
    /// The permitted addresses of `host`.
    async fn lookup(guard: &Guard, host: &str) -> Result<Vec<SocketAddr>, SsrfError> {
        let found: Vec<_> = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|source| SsrfError::Resolve {
                host: host.to_string(),
                source,
            })?
            .collect();
        guard.screen(host, found)
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            let addrs = GuardedResolver::lookup(&guard, name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// A connector layer that refuses a connection made to an address the
/// policy forbids (and not trusted): the last check, on the address actually
/// connected to, whatever led there.
#[derive(Debug, Clone)]
struct PeerCheckLayer {
    guard: Arc<Guard>,
}

impl<S> tower::Layer<S> for PeerCheckLayer {
    type Service = PeerCheck<S>;

    fn layer(&self, inner: S) -> PeerCheck<S> {
        PeerCheck {
            inner,
            guard: self.guard.clone(),
        }
    }
}

#[derive(Debug, Clone)]
struct PeerCheck<S> {
    inner: S,
    guard: Arc<Guard>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, R> tower::Service<R> for PeerCheck<S>
where
    S: tower::Service<R>,
    S::Response: Connection + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let connecting = self.inner.call(request);
        let guard = self.guard.clone();
        Box::pin(async move {
            let conn = connecting.await.map_err(Into::into)?;
            let mut extras = Extensions::new();
            conn.connected().get_extras(&mut extras);
            let peer = extras.get::<HttpInfo>().ok_or(SsrfError::UnknownPeer)?.remote_addr();
            // Dropping the connection closes it: nothing was sent on it yet.
            guard.check_peer(peer.ip())?;
            Ok(conn)
        })
    }
}

/// The redirect policy: http(s) only, IP-literal hosts checked against the
/// policy (names are checked by the resolver), at most [`MAX_REDIRECTS`] hops.
fn redirect_policy(guard: Arc<Guard>) -> redirect::Policy {
    redirect::Policy::custom(move |attempt| {
        // `previous` holds every URL requested so far, the first included.
        if attempt.previous().len() > MAX_REDIRECTS {
            let origin = origin(attempt.url());
            return attempt.error(SsrfError::TooManyRedirects { origin });
        }
        match check_url(&guard.policy, attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(refused) => attempt.error(refused),
        }
    })
}

/// A client builder with the guard in place ([`GuardedResolver`], the
/// redirect policy, the check on each connection's address), rustls, no
/// `Referer` on redirects, no system proxy (through a proxy the address
/// connected to is the proxy's, and no check here could see where a request
/// goes) and the timeouts. Callers may add TLS roots, client certificates or
/// headers; they must not replace the resolver, the redirect policy or the
/// proxy setting.
pub fn guarded_client_builder(
    policy: Arc<NetworkPolicy>,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> reqwest::ClientBuilder {
    let guard = Guard::new(policy);
    reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver { guard: guard.clone() }))
        .connector_layer(PeerCheckLayer { guard: guard.clone() })
        .redirect(redirect_policy(guard))
        // The storage a blob is redirected to need not learn the upstream's URL.
        .referer(false)
        .connect_timeout(connect_timeout)
        .read_timeout(read_timeout)
        // Servers close idle keep-alive connections (Berth after 30 s by
        // default): one reused just as it is closed fails its request.
        .pool_idle_timeout(UPSTREAM_POOL_IDLE)
}

/// How long an idle connection to an upstream is kept for reuse: below the
/// idle timeouts servers commonly use (Berth's 30 s, nginx's 75 s).
const UPSTREAM_POOL_IDLE: Duration = Duration::from_secs(20);

/// A client for upstream requests that holds to `policy`
/// ([`guarded_client_builder`] as it is).
pub fn guarded_client(
    policy: Arc<NetworkPolicy>,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> reqwest::Result<reqwest::Client> {
    guarded_client_builder(policy, connect_timeout, read_timeout).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn policy(allowed: &[&str]) -> NetworkPolicy {
        NetworkPolicy::new(allowed).unwrap()
    }

    #[test]
    fn internal_address_classes_are_refused() {
        let cases = [
            ("127.0.0.1", Forbidden::Loopback),
            ("127.255.0.9", Forbidden::Loopback),
            ("10.1.2.3", Forbidden::Private),
            ("172.16.0.1", Forbidden::Private),
            ("172.31.255.254", Forbidden::Private),
            ("192.168.1.1", Forbidden::Private),
            ("100.100.100.200", Forbidden::SharedAddressSpace),
            ("169.254.169.254", Forbidden::LinkLocal),
            ("0.0.0.0", Forbidden::Unspecified),
            ("0.1.2.3", Forbidden::Unspecified),
            ("224.0.0.1", Forbidden::Multicast),
            ("239.255.255.250", Forbidden::Multicast),
            ("255.255.255.255", Forbidden::Broadcast),
            ("::1", Forbidden::Loopback),
            ("::", Forbidden::Unspecified),
            ("fd00::1", Forbidden::Private),
            ("fc00::1", Forbidden::Private),
            ("fec0::1", Forbidden::Private),
            ("fe80::1", Forbidden::LinkLocal),
            ("febf::1", Forbidden::LinkLocal),
            ("ff02::1", Forbidden::Multicast),
            ("::ffff:10.0.0.1", Forbidden::Private),
            ("::ffff:127.0.0.1", Forbidden::Loopback),
            ("::ffff:169.254.169.254", Forbidden::LinkLocal),
            ("::127.0.0.1", Forbidden::Loopback),
            ("::10.0.0.1", Forbidden::Private),
            ("64:ff9b::a9fe:a9fe", Forbidden::LinkLocal),
        ];
        let none = NetworkPolicy::default();
        for (text, class) in cases {
            assert_eq!(Forbidden::of(ip(text)), Some(class), "{text}");
            assert!(!none.permits(ip(text)), "{text}");
        }
    }

    #[test]
    fn public_addresses_are_permitted() {
        let none = NetworkPolicy::default();
        for text in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "169.255.0.1",
            "2001:4860::8888",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(Forbidden::of(ip(text)), None, "{text}");
            assert!(none.permits(ip(text)), "{text}");
        }
    }

    #[test]
    fn allowed_networks_permit_what_they_list_and_no_more() {
        let p = policy(&["127.0.0.0/8", "fd00::/8", "10.1.2.3", " 192.168.7.9/16 "]);
        for text in [
            "127.0.0.1",
            "127.3.2.1",
            "::ffff:127.0.0.1",
            "fd12::1",
            "10.1.2.3",
            "192.168.0.1",
        ] {
            assert!(p.permits(ip(text)), "{text}");
        }
        for text in ["::1", "10.1.2.4", "fc00::1", "169.254.169.254", "0.0.0.0"] {
            assert!(!p.permits(ip(text)), "{text}");
        }
        assert!(p.permits(ip("8.8.8.8")));
    }

    #[test]
    fn an_allowed_network_that_is_not_one_is_an_error() {
        for bad in ["", "10.0.0.0/33", "localhost", "10.0.0.0/8,fd00::/8"] {
            let err = NetworkPolicy::new(&[bad]).unwrap_err();
            assert!(
                matches!(err, SsrfError::InvalidNetwork(ref t) if t == bad.trim()),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn check_url_refuses_forbidden_literals_and_other_schemes() {
        let p = policy(&[]).trusting(["10.9.9.9", "[fd00::9]", "Mirror.Internal."]);
        let check = |u: &str| check_url(&p, &Url::parse(u).unwrap());
        for u in [
            "http://127.0.0.1:5000/v2/",
            "https://[::1]/",
            "http://[::ffff:7f00:1]/",
            "http://169.254.169.254/latest/meta-data/",
            // The URL parser reads these as 127.0.0.1, as a resolver would.
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0/",
        ] {
            assert!(
                matches!(check(u), Err(SsrfError::ForbiddenAddress { .. })),
                "{u}: {:?}",
                check(u)
            );
        }
        for u in ["file:///etc/passwd", "ftp://example.com/", "gopher://8.8.8.8/"] {
            assert!(matches!(check(u), Err(SsrfError::Scheme { .. })), "{u}");
        }
        for u in [
            "https://example.com/v2/",
            "http://8.8.8.8/",
            "http://10.9.9.9:5000/",
            "http://[fd00::9]/",
            "http://localhost/",
        ] {
            assert!(check(u).is_ok(), "{u}: {:?}", check(u));
        }
        assert!(p.trusts_host("mirror.internal"));
        assert!(!p.trusts_host("other.internal"));
    }

    #[test]
    fn messages_name_the_origin_not_the_query() {
        let url = Url::parse("http://169.254.169.254/bucket/blob?X-Amz-Signature=secret").unwrap();
        let err = check_url(&NetworkPolicy::default(), &url).unwrap_err().to_string();
        assert_eq!(
            err,
            "http://169.254.169.254 (link-local address) is out of reach of upstream requests unless proxy.allowed_networks lists it"
        );
    }

    #[test]
    fn the_resolver_passes_on_only_permitted_addresses() {
        let guard = Guard::new(Arc::new(policy(&["10.0.0.0/8"])));
        let addrs = |list: &[&str]| -> Vec<SocketAddr> { list.iter().map(|a| SocketAddr::new(ip(a), 0)).collect() };
        // A name that answers public and internal addresses at once (as a
        // rebinding name may) is connected to on the public ones only.
        let found = addrs(&["93.184.216.34", "169.254.169.254", "2606:2800::1", "::1", "10.0.0.7"]);
        assert_eq!(
            guard.screen("mixed.example", found).unwrap(),
            addrs(&["93.184.216.34", "2606:2800::1", "10.0.0.7"])
        );
        let err = guard
            .screen("internal.example", addrs(&["169.254.169.254", "::ffff:127.0.0.1"]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "internal.example resolves only to addresses upstream requests may not reach: \
             169.254.169.254 (link-local), ::ffff:127.0.0.1 (loopback)"
        );
        assert!(matches!(
            guard.screen("nothing.example", Vec::new()),
            Err(SsrfError::NoAddress { .. })
        ));
    }

    // ----------------------------------------------------------------------
    // A real client against a loopback server.

    use axum::extract::RawQuery;
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::get;

    /// A server on `addr` (port 0 picks one): `/` answers "ok", `/to?TARGET`
    /// redirects to TARGET as written, `/loop` to itself.
    async fn serve(addr: &str) -> std::net::SocketAddr {
        async fn redirect_to(RawQuery(target): RawQuery) -> impl IntoResponse {
            (StatusCode::FOUND, [(header::LOCATION, target.unwrap_or_default())])
        }
        async fn redirect_loop() -> impl IntoResponse {
            (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, "/loop")])
        }
        let app = axum::Router::new()
            .route("/", get(|| async { "ok" }))
            .route("/to", get(redirect_to))
            .route("/loop", get(redirect_loop));
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let bound = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        bound
    }

    fn client(allowed: &[&str]) -> reqwest::Client {
        client_of(policy(allowed))
    }

    fn client_of(policy: NetworkPolicy) -> reqwest::Client {
        guarded_client(Arc::new(policy), Duration::from_secs(5), Duration::from_secs(5)).unwrap()
    }

    /// The guard's refusal behind a request that must fail.
    async fn refusal(client: &reqwest::Client, url: &str) -> String {
        let err = match client.get(url).send().await {
            Ok(resp) => panic!("GET {url} was answered {}", resp.status()),
            Err(err) => err,
        };
        match SsrfError::behind(&err) {
            Some(refused) => refused.to_string(),
            None => panic!("GET {url} failed, but not by the guard: {err:?}"),
        }
    }

    #[tokio::test]
    async fn loopback_is_refused_by_name_and_by_literal_unless_allowed() {
        let port = serve("127.0.0.1:0").await.port();
        let guarded = client(&[]);
        let by_name = refusal(&guarded, &format!("http://localhost:{port}/")).await;
        assert!(
            by_name.starts_with(
                "localhost resolves only to addresses upstream requests may not reach: 127.0.0.1 (loopback)"
            ),
            "{by_name}"
        );
        let by_literal = refusal(&guarded, &format!("http://127.0.0.1:{port}/")).await;
        assert_eq!(
            by_literal,
            "connected to 127.0.0.1 (loopback address), which is out of reach of upstream requests unless proxy.allowed_networks lists it"
        );

        let allowed = client(&["127.0.0.0/8"]);
        for url in [format!("http://localhost:{port}/"), format!("http://127.0.0.1:{port}/")] {
            let resp = allowed.get(&url).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{url}");
            assert_eq!(resp.text().await.unwrap(), "ok");
        }
    }

    #[tokio::test]
    async fn trusted_hosts_are_reached_whatever_they_resolve_to() {
        let port = serve("127.0.0.1:0").await.port();
        let by_name = client_of(policy(&[]).trusting(["localhost"]));
        let resp = by_name.get(format!("http://localhost:{port}/")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let by_literal = client_of(policy(&[]).trusting(["127.0.0.1"]));
        let resp = by_literal
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        // Trusting one loopback address does not open the others.
        refusal(&by_literal, &format!("http://localhost:{port}/")).await;
    }

    #[tokio::test]
    async fn redirects_to_forbidden_hosts_are_refused() {
        // An upstream the policy permits (127.0.0.2 only) redirects elsewhere on loopback.
        let port = serve("127.0.0.2:0").await.port();
        let guarded = client(&["127.0.0.2/32"]);
        let start = format!("http://127.0.0.2:{port}");
        let resp = guarded.get(format!("{start}/")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let resp = guarded
            .get(format!("{start}/to?http://127.0.0.2:{port}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "a redirect to a permitted host is followed");

        let literal = refusal(&guarded, &format!("{start}/to?http://127.0.0.1:{port}/?sig=secret")).await;
        assert_eq!(
            literal,
            format!("http://127.0.0.1:{port} (loopback address) is out of reach of upstream requests unless proxy.allowed_networks lists it")
        );
        let metadata = refusal(&guarded, &format!("{start}/to?http://169.254.169.254/latest/")).await;
        assert!(metadata.contains("link-local"), "{metadata}");
        let v6 = refusal(&guarded, &format!("{start}/to?http://[::1]:{port}/")).await;
        assert!(v6.contains("loopback"), "{v6}");
        let name = refusal(&guarded, &format!("{start}/to?http://localhost:{port}/")).await;
        assert!(name.starts_with("localhost resolves only to"), "{name}");
        let scheme = refusal(&guarded, &format!("{start}/to?ftp://127.0.0.2:{port}/")).await;
        assert_eq!(scheme, "a ftp: URL: upstream requests go over http or https only");
        // A Location without an authority is not even a redirect to follow.
        let resp = guarded
            .get(format!("{start}/to?file:///etc/passwd"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 302);
    }

    #[tokio::test]
    async fn a_redirect_loop_ends_in_an_error() {
        let port = serve("127.0.0.1:0").await.port();
        let guarded = client(&["127.0.0.1/32"]);
        let err = refusal(&guarded, &format!("http://127.0.0.1:{port}/loop")).await;
        assert_eq!(
            err,
            format!("more than 10 redirects, the last to http://127.0.0.1:{port}: a redirect loop?")
        );
    }
}
