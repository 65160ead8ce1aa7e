//! The HTTPS server: an accept loop handing each connection to its own task (TLS
//! handshake, then HTTP/1.1 keep-alive or HTTP/2), bounded at every step so that a slow
//! or broken client holds nothing but its own connection, and a graceful drain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::{TowerToHyperService, TowerToHyperServiceFuture};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower_http::timeout::TimeoutLayer;

/// Longest a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a new connection may stay silent after the handshake, whatever the protocol:
/// hyper's own HTTP/1 timer does not run while it sniffs for the HTTP/2 preface, and
/// HTTP/2 has no timer before its first frame.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest an HTTP/1 connection may wait for, and take to send, a request's headers.
/// hyper starts this clock as soon as it waits for the next request, so it is also the
/// idle timeout of kept-alive connections: it must exceed the API server's own (Go's
/// 90 s), so that the client, never this server, closes an idle connection. Otherwise a
/// review sent just as the server closes the connection fails, and the API server
/// applies the failure policy to a perfectly good request.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest from request head to response, body read included: the API server gives up
/// after its `timeoutSeconds` (at most 30) anyway.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the in-flight requests may take to finish once shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an idle HTTP/2 connection is pinged, so that a vanished client is noticed.
const HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Pause after a failed accept (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` over TLS on `listener` until `shutdown` resolves, then stops
/// accepting and lets open requests finish for at most [`DRAIN_TIMEOUT`].
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let service = TowerToHyperService::new(router.layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        REQUEST_TIMEOUT,
    )));
    let builder = connection_builder();
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);

    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Reap finished connection tasks so the set only holds open connections.
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_connection(
            tcp,
            peer,
            acceptor.clone(),
            builder.clone(),
            service.clone(),
            graceful.watcher(),
        ));
    }

    drop(listener);
    tracing::info!(
        connections = connections.len(),
        "draining the webhook server"
    );
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            "requests still open after the drain timeout; closing their connections"
        );
    }
    connections.shutdown().await;
    Ok(())
}

/// HTTP/1.1 with keep-alive (what the API server speaks) and HTTP/2, both with timers
/// so that their timeouts are enforced.
fn connection_builder() -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(HTTP2_KEEP_ALIVE_INTERVAL);
    builder
}

/// One connection, start to end. Its failures are the client's business: logged at
/// debug, never seen by other connections.
async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    builder: Builder<TokioExecutor>,
    service: TowerToHyperService<Router>,
    watcher: Watcher,
) {
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
    }
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let arrived = Arc::new(Notify::new());
    let service = NoticeFirstRequest {
        inner: service,
        arrived: Arc::clone(&arrived),
    };
    let connection = watcher.watch(builder.serve_connection(TokioIo::new(tls), service));
    let silent_too_long = async {
        tokio::select! {
            () = arrived.notified() => std::future::pending::<()>().await,
            () = tokio::time::sleep(FIRST_REQUEST_TIMEOUT) => {}
        }
    };
    tokio::select! {
        served = connection => {
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        }
        () = silent_too_long => {
            tracing::debug!(%peer, "no request after the TLS handshake; closing the connection");
        }
    }
}

/// The service of one connection, telling the connection's task that a request arrived
/// so that it stops timing the silence after the handshake.
#[derive(Clone)]
struct NoticeFirstRequest {
    inner: TowerToHyperService<Router>,
    arrived: Arc<Notify>,
}

impl hyper::service::Service<Request<Incoming>> for NoticeFirstRequest {
    type Response =
        <TowerToHyperService<Router> as hyper::service::Service<Request<Incoming>>>::Response;
    type Error = Infallible;
    type Future = TowerToHyperServiceFuture<Router, Request<Incoming>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.arrived.notify_one();
        self.inner.call(request)
    }
}
