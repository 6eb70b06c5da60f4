//! The accept loop: every TCP connection served by hyper (HTTP/1.1 and
//! HTTP/2) with the router, until shutdown, then drained.
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
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};

/// Largest read buffer of one connection. A request head must fit in it:
/// 16 KiB, twice the 8 KiB that common proxies allow for one header line, and
/// several times the longest bearer token a client sends.
pub const READ_BUFFER_MAX: usize = 16 << 10;

/// How long accepting waits after an error such as "too many open files".
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

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

/// Serves `router` on `listener` until `shutdown` completes, then waits for
/// the requests in progress to finish, up to `limits.shutdown_grace`; the
/// connections still open then are abandoned (an upload cut that way loses
/// only its unacknowledged chunk and resumes from the session's offset).
/// Handlers see the peer's address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    timeouts: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut make_service = router.into_make_service_with_connect_info::<SocketAddr>();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(READ_BUFFER_MAX)
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
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
        let service = TowerToHyperService::new(
            service
                .map_request(|req: Request<Incoming>| req.map(Body::new))
                .map_err(|e: Infallible| e),
        );
        let stream = StallGuard::new(stream, timeouts.write_stall);
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::trace!(error = %e, %peer, "connection ended with an error");
            }
        });
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
