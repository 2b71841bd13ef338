//! The HTTP/1.1 server loop: hyper with read limits, serving the router.
//!
//! `axum::serve` has no setting for how long a client may take to send its headers, so a
//! client that sends half its headers held a connection for minutes. This loop is axum's
//! own (accept, serve each connection with the router, drain on shutdown) with hyper's
//! header read timeout (which also closes idle keep-alive connections), a bounded header
//! buffer, a write timeout (a client that stops reading its answer is cut off) and a
//! bound on open connections. Bodies are bounded in size and time by the handlers that
//! read them ([`crate::extract::Body`]).

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;

/// Limits of the connection layer.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time a client has to send a request's headers.
    pub header_read_timeout: Duration,
    /// Bytes of request line and headers hyper buffers (past it: 431).
    pub max_header_bytes: usize,
    /// Time a write to the client may make no progress before the connection is closed.
    pub write_timeout: Duration,
    /// Connections open at once; the next waits in the listen queue.
    pub max_connections: usize,
    /// Time open connections get to finish at shutdown.
    pub drain: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            // Hyper's minimum is 8 KiB; 64 KiB also bounds the URI below hyper's own
            // bare 414 (64 KiB), so long URIs reach our JSON 414.
            max_header_bytes: 64 * 1024,
            write_timeout: Duration::from_secs(30),
            max_connections: 1024,
            drain: Duration::from_secs(5),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets open connections
/// finish for up to `limits.drain`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        // At the connection limit, stop accepting until one closes.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(limits.write_timeout));
        let service = TowerToHyperService::new(router.clone());
        let connection = builder.serve_connection(TokioIo::new(Box::pin(stream)), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("connections still open after the drain time were closed");
    }
    Ok(())
}
