//! Listening and stopping: a listening socket on the IPv6 wildcard that takes IPv4 too,
//! a one-way trigger that any number of tasks await, and the signals that start a
//! shutdown.

use anyhow::Context as _;
use tokio::net::TcpListener;

/// Listens on `addr` for the `what` server; on `[::]` where the kernel has no IPv6, on
/// IPv4 instead.
pub async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    let listener = listen(addr).or_else(|error| {
        // `[::]` where the kernel has no IPv6 (ipv6.disable=1): IPv4 is what there is.
        if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED {
            let v4 = std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port()));
            tracing::warn!(%addr, %error, fallback = %v4, "no IPv6 here; listening on IPv4 only");
            listen(v4)
        } else {
            Err(error)
        }
    });
    listener.with_context(|| format!("cannot listen on {addr} for the {what} server"))
}

/// A listening socket on `addr`; on the IPv6 wildcard, dual-stack whatever the system
/// default (`net.ipv6.bindv6only`), so IPv4-only, IPv6-only and dual-stack clusters all
/// reach it.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// A one-way signal: started once, awaited by any number of tasks.
#[derive(Debug)]
pub struct Trigger(tokio::sync::watch::Sender<bool>);

impl Trigger {
    pub fn new() -> Self {
        Self(tokio::sync::watch::channel(false).0)
    }

    pub fn start(&self) {
        self.0.send_replace(true);
    }

    /// Resolves once started.
    pub fn signaled(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut receiver = self.0.subscribe();
        async move {
            // The sender outlives every server, so the channel cannot close first; if it
            // did, stopping is the right thing anyway.
            let _ = receiver.wait_for(|draining| *draining).await;
        }
    }
}

/// SIGTERM (what the kubelet sends) and SIGINT (Ctrl-C).
pub struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
                interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    pub async fn next(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.terminate.recv() => {}
                _ = self.interrupt.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

impl Default for Trigger {
    fn default() -> Self {
        Self::new()
    }
}
