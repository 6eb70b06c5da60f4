//! The accept loop: every TCP connection served by hyper (HTTP/1.1 and
//! HTTP/2, over TLS when `[tls]` is set) with the router, until shutdown,
//! then drained.
//!
//! `axum::serve` does the same but offers no way to set hyper's read buffer.
//! hyper grows a connection's read buffer up to about 400 KiB while a large
//! body streams in, and each body chunk handed on keeps its part of that
//! buffer alive until it is written: twenty concurrent pushes held over 20 MiB
//! that way. [`READ_BUFFER_MAX`] bounds it; the blob store copies each chunk
//! into buffers of its own, so hyper reuses one buffer per connection.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tower::{Service, ServiceExt};

use crate::tls::{ServerTls, VerifiedClientCertificate};

/// Largest read buffer of one connection. A request head must fit in it:
/// 16 KiB, twice the 8 KiB that common proxies allow for one header line, and
/// several times the longest bearer token a client sends.
pub const READ_BUFFER_MAX: usize = 16 << 10;

/// The HTTP/2 flow-control window of a connection (and of each stream in
/// it): the most body bytes a client may send before the server has taken
/// them, which is what bounds an HTTP/2 connection's buffered input instead
/// of [`READ_BUFFER_MAX`]. hyper's default, set here so that it stays put.
/// Measured over TLS on loopback (debug build, 2 busy cores): 20 concurrent
/// 20 MiB pushes peaked 22 MiB above HTTP/1.1 with 1 MiB, 5 MiB above with
/// 256 KiB; but a single 100 MiB push took 0.9-1.7 s with 1 MiB, 2.0 s with
/// 512 KiB and 2.5 s with 256 KiB, because a small window stalls the client
/// while the blob store writes. Throughput wins; the bound is about 1 MiB
/// per connection.
const H2_WINDOW: u32 = 1 << 20;

/// How long accepting waits after an error such as "too many open files".
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Most bytes of a plain-HTTP request read (and dropped) on the TLS port
/// after answering it, so that closing does not reset the connection before
/// the client has read the answer.
const PLAIN_REQUEST_DRAIN: u64 = 64 << 10;

/// What a plain-HTTP request on the TLS port is told.
const PLAIN_ON_TLS_MESSAGE: &str = "This port speaks HTTPS only: use an https:// URL.\n";

/// How long connections may keep the server waiting.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionLimits {
    /// To send a request's headers, and to start the next request on an
    /// idle keep-alive connection (HTTP/1.1).
    pub header_read: Option<Duration>,
    /// For a response write that the client does not read.
    pub write_stall: Option<Duration>,
    /// After shutdown begins, for the requests in progress to finish;
    /// `None` waits for them however long they take.
    pub shutdown_grace: Option<Duration>,
}

/// Serves `router` on `listener` (over TLS when `tls` is given) until
/// `shutdown` completes, then waits for the requests in progress to finish,
/// up to `limits.shutdown_grace`; the connections still open then are
/// abandoned (an upload cut that way loses only its unacknowledged chunk
/// and resumes from the session's offset).
/// Handlers see the peer's address as `ConnectInfo<SocketAddr>`, and on a
/// connection with a verified client certificate a
/// [`VerifiedClientCertificate`] extension.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    router: Router,
    timeouts: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut make_service = router.into_make_service_with_connect_info::<SocketAddr>();
    let mut builder = Builder::new(TokioExecutor::new());
    // Over TLS too: rustls adds a buffer of one record (16 KiB) of its own.
    builder
        .http1()
        .max_buf_size(READ_BUFFER_MAX)
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    builder
        .http2()
        .initial_connection_window_size(H2_WINDOW)
        .initial_stream_window_size(H2_WINDOW);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Per-connection failures (reset before accept) and
                    // resource exhaustion alike: the listener stays usable.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // A response's head and a streamed body go out in separate writes;
        // with Nagle's algorithm the second waits for the client's delayed
        // ACK (40 ms on Linux) whenever the first is small.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let service = match make_service.call(peer).await {
            Ok(service) => service,
            Err(never) => match never {},
        };
        // Watched from before the handshake: a shutdown waits for a
        // handshake in progress (at most its timeout), then for its requests.
        let watcher = graceful.watcher();
        let builder = builder.clone();
        match &tls {
            None => {
                let stream = StallGuard::new(stream, timeouts.write_stall);
                let connection =
                    builder.serve_connection_with_upgrades(TokioIo::new(stream), hyper_service(service, None));
                let connection = watcher.watch(connection.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::trace!(error = %e, %peer, "connection ended with an error");
                    }
                });
            }
            Some(tls) => {
                let config = tls.current();
                let timeout = tls.handshake_timeout();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(timeout, handshake(stream, config)).await {
                        Ok(Ok(Some(stream))) => stream,
                        Ok(Ok(None)) => return,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %peer, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let verified = stream.get_ref().1.peer_certificates().is_some();
                    let service = hyper_service(service, verified.then_some(VerifiedClientCertificate));
                    let stream = StallGuard::new(stream, timeouts.write_stall);
                    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(connection.into_owned()).await {
                        tracing::trace!(error = %e, %peer, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    match timeouts.shutdown_grace {
        Some(grace) => {
            if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
                tracing::warn!(
                    grace_secs = grace.as_secs(),
                    "requests still in progress after shutdown_grace_secs; closing their connections"
                );
            }
        }
        None => graceful.shutdown().await,
    }
}

/// The router's service for one connection, as hyper calls it.
fn hyper_service<S>(
    service: S,
    client_certificate: Option<VerifiedClientCertificate>,
) -> TowerToHyperService<
    impl Service<Request<Incoming>, Response = S::Response, Error = Infallible, Future: Send> + Clone,
>
where
    S: Service<Request, Error = Infallible, Future: Send + 'static> + Clone + Send + 'static,
{
    TowerToHyperService::new(
        service
            .map_request(move |req: Request<Incoming>| {
                let mut req = req.map(Body::new);
                with_host_header(&mut req);
                if let Some(verified) = client_certificate {
                    req.extensions_mut().insert(verified);
                }
                req
            })
            .map_err(|e: Infallible| e),
    )
}

/// Gives an HTTP/2 request the `Host` header its `:authority` stands for:
/// handlers (the token realm of challenges, say) read the host from that
/// header, and an HTTP/2 client sends none.
fn with_host_header(req: &mut Request) {
    if req.headers().contains_key(header::HOST) {
        return;
    }
    let host = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    if let Some(host) = host {
        req.headers_mut().insert(header::HOST, host);
    }
}

/// Runs the TLS handshake of an accepted connection. A client that speaks
/// plain HTTP is told to use HTTPS instead (`None`), as a clearer failure
/// than a TLS alert it cannot read.
async fn handshake(stream: TcpStream, config: Arc<ServerConfig>) -> std::io::Result<Option<TlsStream<TcpStream>>> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Ok(None);
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        answer_plain_http(stream).await;
        return Ok(None);
    }
    TlsAcceptor::from(config).accept(stream).await.map(Some)
}

/// Answers a plain-HTTP request on the TLS port with a 400 and closes.
async fn answer_plain_http(mut stream: TcpStream) {
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{PLAIN_ON_TLS_MESSAGE}",
        PLAIN_ON_TLS_MESSAGE.len()
    );
    if stream.write_all(answer.as_bytes()).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    // Unread bytes at close would reset the connection, and the client
    // could lose the answer: read what it sent, up to a bound.
    let _ = tokio::io::copy(&mut (&mut stream).take(PLAIN_REQUEST_DRAIN), &mut tokio::io::sink()).await;
}

/// A connection whose writes fail with `TimedOut` when the client reads
/// nothing for `limit`: a download to a client that stopped reading would
/// otherwise hold its task, its buffers and its file handle forever.
struct StallGuard<S> {
    inner: S,
    limit: Option<Duration>,
    /// Set while a write waits for the client; cleared by any progress.
    stalled_since: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> StallGuard<S> {
    fn new(inner: S, limit: Option<Duration>) -> Self {
        StallGuard {
            inner,
            limit,
            stalled_since: None,
        }
    }

    /// `pending` from a write: starts or checks the stall clock.
    fn on_pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let Some(limit) = self.limit else {
            return Poll::Pending;
        };
        let deadline = self
            .stalled_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client read nothing for {} s (limits.write_stall_timeout_secs)",
                    limit.as_secs()
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallGuard<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallGuard<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.on_pending(cx),
            ready => {
                self.stalled_since = None;
                ready
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.on_pending(cx),
            ready => {
                self.stalled_since = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.on_pending(cx),
            ready => {
                self.stalled_since = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
