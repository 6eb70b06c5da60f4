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
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};

/// Largest read buffer of one connection. A request head must fit in it:
/// 16 KiB, twice the 8 KiB that common proxies allow for one header line, and
/// several times the longest bearer token a client sends.
pub const READ_BUFFER_MAX: usize = 16 << 10;

/// How long accepting waits after an error such as "too many open files".
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `shutdown` completes, then waits for
/// the requests in progress to finish. Handlers see the peer's address as
/// `ConnectInfo<SocketAddr>`.
pub async fn serve(listener: TcpListener, router: Router, shutdown: impl Future<Output = ()>) {
    let mut make_service = router.into_make_service_with_connect_info::<SocketAddr>();
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(READ_BUFFER_MAX);
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
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::trace!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
