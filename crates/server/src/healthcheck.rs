//! `berth healthcheck`: a liveness probe for container runtimes that have no
//! HTTP client in the image (a `FROM scratch` image has no curl or wget).
//!
//! It sends one plain-HTTP `GET` and succeeds on a 200. It owns nothing of
//! the server: no configuration file is read, no runtime is started, nothing
//! is written. Only `BERTH_TLS__PLAIN_LISTEN` or else `BERTH_LISTEN`, when
//! set, picks the default port, so that an image's health check follows the
//! port its container was given.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};

/// The URL probed when none is given: `/healthz` on loopback at the port of
/// `listen` (`BERTH_LISTEN`), else at the default port 5000.
pub fn default_url(listen: Option<&str>) -> String {
    let addr = listen
        .and_then(|l| l.parse::<SocketAddr>().ok())
        .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 5000)));
    // A server on every address answers on loopback.
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/healthz", SocketAddr::new(ip, addr.port()))
}

/// An `http://` URL split into what the request needs.
#[derive(Debug, PartialEq, Eq)]
struct Target<'a> {
    /// `host:port` (a bracketed IPv6 address stays bracketed), to connect to
    /// and to send as `Host`.
    authority: String,
    path: &'a str,
}

fn parse(url: &str) -> anyhow::Result<Target<'_>> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("{url}: only http:// URLs can be probed");
    };
    let (host_port, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if host_port.is_empty() || host_port.contains('@') {
        bail!("{url}: expected http://HOST[:PORT]/PATH");
    }
    // A port is present when the text after the last ':' is outside brackets.
    let has_port = host_port.rfind(':').is_some_and(|i| !host_port[i..].contains(']'));
    let authority = if has_port {
        host_port.to_owned()
    } else {
        format!("{host_port}:80")
    };
    Ok(Target { authority, path })
}

/// Sends `GET url` and succeeds when the answer's status is 200.
pub fn probe(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let target = parse(url)?;
    let addrs: Vec<_> = target
        .authority
        .to_socket_addrs()
        .with_context(|| format!("{url}: cannot resolve {}", target.authority))?
        .collect();
    let mut last_error = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => return request(stream, &target, timeout).with_context(|| format!("GET {url}")),
            Err(e) => last_error = Some(e),
        }
    }
    match last_error {
        Some(e) => Err(e).with_context(|| format!("{url}: cannot connect")),
        None => bail!("{url}: {} resolves to no address", target.authority),
    }
}

fn request(mut stream: TcpStream, target: &Target<'_>, timeout: Duration) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: berth-healthcheck\r\nConnection: close\r\n\r\n",
        target.path, target.authority
    )?;
    // The status line is all that is needed; the body may be anything.
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < head.len() && !head[..len].contains(&b'\n') {
        match stream.read(&mut head[len..])? {
            0 => break,
            n => len += n,
        }
    }
    let line = String::from_utf8_lossy(&head[..len]);
    let line = line.lines().next().unwrap_or_default();
    match line.split(' ').nth(1) {
        Some("200") => Ok(()),
        Some(_) => bail!("answered {}", line.trim()),
        None => bail!("no HTTP answer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_into_authority_and_path() {
        let t = parse("http://127.0.0.1:5000/healthz").unwrap();
        assert_eq!((t.authority.as_str(), t.path), ("127.0.0.1:5000", "/healthz"));
        let t = parse("http://localhost").unwrap();
        assert_eq!((t.authority.as_str(), t.path), ("localhost:80", "/"));
        let t = parse("http://[::1]:5000/readyz").unwrap();
        assert_eq!((t.authority.as_str(), t.path), ("[::1]:5000", "/readyz"));
        let t = parse("http://[::1]/readyz").unwrap();
        assert_eq!(t.authority, "[::1]:80");
        assert!(parse("https://127.0.0.1/healthz").is_err());
        assert!(parse("http:///healthz").is_err());
        assert!(parse("http://user@host/").is_err());
    }

    #[test]
    fn the_default_url_follows_the_listen_address() {
        assert_eq!(default_url(None), "http://127.0.0.1:5000/healthz");
        assert_eq!(default_url(Some("0.0.0.0:8080")), "http://127.0.0.1:8080/healthz");
        assert_eq!(default_url(Some("[::]:5001")), "http://[::1]:5001/healthz");
        assert_eq!(default_url(Some("10.1.2.3:5002")), "http://10.1.2.3:5002/healthz");
        assert_eq!(default_url(Some("not an address")), "http://127.0.0.1:5000/healthz");
    }

    #[test]
    fn a_200_passes_and_anything_else_fails() {
        for (answer, ok) in [
            ("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", true),
            ("HTTP/1.1 503 Service Unavailable\r\n\r\n", false),
            ("garbage", false),
        ] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}/healthz", listener.local_addr().unwrap());
            let server = std::thread::spawn(move || {
                let (mut conn, _) = listener.accept().unwrap();
                let mut request = [0u8; 512];
                let n = conn.read(&mut request).unwrap();
                conn.write_all(answer.as_bytes()).unwrap();
                String::from_utf8_lossy(&request[..n]).into_owned()
            });
            let result = probe(&url, Duration::from_secs(5));
            let request = server.join().unwrap();
            assert!(request.starts_with("GET /healthz HTTP/1.1\r\n"), "{request}");
            assert_eq!(result.is_ok(), ok, "{answer:?}: {result:?}");
        }
    }

    #[test]
    fn nothing_listening_fails() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/healthz", listener.local_addr().unwrap());
        drop(listener);
        assert!(probe(&url, Duration::from_secs(2)).is_err());
    }
}
