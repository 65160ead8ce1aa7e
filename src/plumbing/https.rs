//! The HTTPS server: an accept loop handing each connection to its own task (TLS
//! handshake, then HTTP/1.1 keep-alive or HTTP/2), bounded at every step so that a slow
//! or broken client holds nothing but its own connection, and a graceful shutdown that
//! moves kept-alive clients elsewhere before it stops accepting.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request as AxumRequest, State};
use axum::http::{HeaderValue, StatusCode, Version, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::{TowerToHyperService, TowerToHyperServiceFuture};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
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
/// Longest the in-flight requests may take to finish once the server stops accepting.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an idle HTTP/2 connection is pinged, so that a vanished client is noticed.
const HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Pause after a failed accept (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Connections served at once. The API server keeps a few per replica; beyond this
/// many, new connections wait in the listen backlog (delayed, not refused), so that
/// memory stays bounded whoever connects: each connection holds at most its TLS buffers
/// and the HTTP buffers below, and the bodies being read share one budget
/// (`body::BODY_BUDGET_BYTES`).
pub const MAX_CONNECTIONS: usize = 256;
/// Largest HTTP/1 read buffer of one connection (hyper's default is about 400 KiB);
/// bodies stream through it.
const HTTP1_MAX_BUFFER: usize = 64 * 1024;
/// HTTP/2 flow-control windows and streams per connection: what one connection can
/// make this server buffer before a handler reads it.
const HTTP2_STREAM_WINDOW: u32 = 256 * 1024;
const HTTP2_CONNECTION_WINDOW: u32 = 512 * 1024;
const HTTP2_MAX_STREAMS: u32 = 32;

/// Where the server is in its shutdown, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Serving,
    /// Still accepting and answering, but moving every client off its connection.
    Closing,
    /// No longer accepting; the open requests finish.
    Stopping,
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves, then stops
/// accepting and lets open requests finish for at most [`DRAIN_TIMEOUT`].
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    serve_tls_draining(listener, tls, router, shutdown, Duration::ZERO).await
}

/// Like [`serve_tls`], with a drain delay before it stops accepting: for `delay` after
/// `shutdown` resolves, it accepts and answers as before, but every HTTP/1.1 answer
/// carries `Connection: close` and every HTTP/2 connection gets a GOAWAY, so that
/// kept-alive clients finish their exchange and reconnect, to another replica once
/// they have learned that this one is leaving. A connection that sees no request in
/// that time is closed when the server stops accepting.
pub async fn serve_tls_draining(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()>,
    delay: Duration,
) -> anyhow::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let (phase, phases) = watch::channel(Phase::Serving);
    let service = TowerToHyperService::new(
        router
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                REQUEST_TIMEOUT,
            ))
            .layer(middleware::from_fn_with_state(
                phases.clone(),
                close_when_shutting_down,
            )),
    );
    let builder = connection_builder();
    let mut connections = JoinSet::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut stop_accepting = pin!(async {
        shutdown.await;
        phase.send_replace(Phase::Closing);
        tracing::info!(
            delay = ?delay,
            "webhook shutdown: still accepting and answering, but closing each HTTP/1.1 \
             connection after its next answer and sending HTTP/2 connections a GOAWAY"
        );
        tokio::time::sleep(delay).await;
    });

    loop {
        // A free slot first: at the limit, new connections wait in the backlog.
        let slot = tokio::select! {
            () = &mut stop_accepting => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = &mut stop_accepting => break,
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
        let connection = serve_connection(
            tcp,
            peer,
            acceptor.clone(),
            builder.clone(),
            service.clone(),
            phases.clone(),
        );
        connections.spawn(async move {
            connection.await;
            drop(slot);
        });
    }

    drop(listener);
    phase.send_replace(Phase::Stopping);
    tracing::info!(
        connections = connections.len(),
        "webhook shutdown: stopped accepting; letting the open requests finish"
    );
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drained).await.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "requests still open after the drain timeout; closing their connections"
        );
    }
    connections.shutdown().await;
    tracing::info!("webhook shutdown: the webhook server has stopped");
    Ok(())
}

/// Once shutdown starts, tells each HTTP/1 client to close its connection after this
/// answer, the only way HTTP/1 has to move a kept-alive client without racing its next
/// request. HTTP/2 has no `Connection` header: its connections get a GOAWAY instead.
async fn close_when_shutting_down(
    State(phase): State<watch::Receiver<Phase>>,
    request: AxumRequest,
    next: Next,
) -> Response {
    let http1 = matches!(request.version(), Version::HTTP_10 | Version::HTTP_11);
    let mut response = next.run(request).await;
    if http1 && *phase.borrow() != Phase::Serving {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// HTTP/1.1 with keep-alive (what the API server speaks) and HTTP/2, both with timers
/// so that their timeouts are enforced.
fn connection_builder() -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(HTTP1_MAX_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(HTTP2_KEEP_ALIVE_INTERVAL)
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
        .max_concurrent_streams(HTTP2_MAX_STREAMS);
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
    mut phase: watch::Receiver<Phase>,
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
    // HTTP/2 can tell its client to move on at any time, without racing its requests
    // (GOAWAY), so it does as soon as shutdown starts. HTTP/1 cannot: its answers carry
    // `Connection: close` from then on, and a connection still open when the server
    // stops accepting is closed at once if idle, else after its answer.
    let close_from = match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => Phase::Closing,
        _ => Phase::Stopping,
    };
    let arrived = Arc::new(Notify::new());
    let service = NoticeFirstRequest {
        inner: service,
        arrived: Arc::clone(&arrived),
    };
    let mut connection = pin!(builder.serve_connection(TokioIo::new(tls), service));
    // Resolves to whether the client spoke, once it is time to close: never before the
    // first request, which a client connects to send, even while shutting down.
    let spoke_and_closing = async {
        tokio::select! {
            () = arrived.notified() => {}
            () = tokio::time::sleep(FIRST_REQUEST_TIMEOUT) => return false,
        }
        // An error means the server is gone: closing is right then too.
        let _ = phase.wait_for(|phase| *phase >= close_from).await;
        true
    };
    let spoke = tokio::select! {
        served = connection.as_mut() => {
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            return;
        }
        spoke = spoke_and_closing => spoke,
    };
    if !spoke {
        tracing::debug!(%peer, "no request after the TLS handshake; closing the connection");
        return;
    }
    connection.as_mut().graceful_shutdown();
    if let Err(error) = connection.await {
        tracing::debug!(%peer, %error, "connection ended with an error");
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
