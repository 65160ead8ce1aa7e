//! A small HTTPS client that calls the webhook the way the API server does: it verifies
//! the server against the CA bundle under the service's DNS name (`<svc>.<ns>.svc`),
//! speaks HTTP/1.1 and keeps its connection alive between reviews. The demo and the
//! tests use it, so they exercise the same TLS and HTTP path a cluster does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::plumbing::tls::crypto_provider;

/// How the client connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The TLS versions offered; narrowed in tests to prove each one works.
    pub tls_versions: Vec<&'static SupportedProtocolVersion>,
    /// Longest one `post` may take, connecting included.
    pub timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            tls_versions: vec![&TLS13, &TLS12],
            timeout: Duration::from_secs(10),
        }
    }
}

/// An HTTPS client for one webhook server.
pub struct AdmissionClient {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    host: HeaderValue,
    connector: TlsConnector,
    timeout: Duration,
    /// The kept-alive connection; a lock because HTTP/1.1 carries one request at a time.
    connection: tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>,
    connections_opened: AtomicUsize,
    tls_version: Mutex<Option<ProtocolVersion>>,
}

impl std::fmt::Debug for AdmissionClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmissionClient")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl AdmissionClient {
    /// A client for the server at `addr`, trusting the CAs in `ca_pem` and expecting a
    /// certificate for `server_name`.
    pub fn new(addr: SocketAddr, ca_pem: &[u8], server_name: &str) -> anyhow::Result<Self> {
        Self::with_options(addr, ca_pem, server_name, ClientOptions::default())
    }

    pub fn with_options(
        addr: SocketAddr,
        ca_pem: &[u8],
        server_name: &str,
        options: ClientOptions,
    ) -> anyhow::Result<Self> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots
                .add(cert.context("the CA bundle is not valid PEM")?)
                .context("the CA bundle holds a certificate that cannot be a root")?;
        }
        if roots.is_empty() {
            anyhow::bail!("the CA bundle holds no certificate");
        }
        let mut config = ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&options.tls_versions)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            addr,
            server_name: ServerName::try_from(server_name.to_string())
                .with_context(|| format!("{server_name:?} is not a valid TLS server name"))?,
            host: HeaderValue::from_str(server_name)
                .with_context(|| format!("{server_name:?} is not a valid Host header"))?,
            connector: TlsConnector::from(Arc::new(config)),
            timeout: options.timeout,
            connection: tokio::sync::Mutex::new(None),
            connections_opened: AtomicUsize::new(0),
            tls_version: Mutex::new(None),
        })
    }

    /// POSTs `body` as JSON to `path` and returns the status and the whole response
    /// body. Reuses the open connection when the server kept it alive.
    pub async fn post(&self, path: &str, body: Vec<u8>) -> anyhow::Result<(StatusCode, Bytes)> {
        self.request(Method::POST, path, body).await
    }

    /// Sends any request, e.g. one the API server never sends, to see it refused.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        self.request_as(method, path, "application/json", body)
            .await
    }

    /// Like [`AdmissionClient::request`], with another `Content-Type`.
    pub async fn request_as(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let content_type = HeaderValue::from_str(content_type)
            .with_context(|| format!("{content_type:?} is not a header value"))?;
        let sending = self.send_on_connection(&method, path, &content_type, Bytes::from(body));
        tokio::time::timeout(self.timeout, sending)
            .await
            .with_context(|| format!("{method} {path} timed out after {:?}", self.timeout))?
    }

    /// How many connections this client has opened: one, for any number of requests,
    /// while the server keeps it alive.
    pub fn connections_opened(&self) -> usize {
        self.connections_opened.load(Ordering::Relaxed)
    }

    /// The TLS version of the last connection opened.
    pub fn tls_version(&self) -> Option<ProtocolVersion> {
        *self
            .tls_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a connection and completes the TLS handshake, sending nothing: it holds one
    /// of the server's connection slots until dropped, as an idle client does.
    pub async fn open_idle(&self) -> anyhow::Result<impl Send + 'static> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("cannot connect to {}", self.addr))?;
        Ok(self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await?)
    }

    async fn send_on_connection(
        &self,
        method: &Method,
        path: &str,
        content_type: &HeaderValue,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut slot = self.connection.lock().await;
        if let Some(mut sender) = slot.take()
            && sender.ready().await.is_ok()
        {
            // A kept-alive connection can be closed by the server at any moment; a
            // review is safe to send again, on a new connection.
            match self
                .send(&mut sender, method, path, content_type, body.clone())
                .await
            {
                Ok(answer) => {
                    *slot = Some(sender);
                    return Ok(answer);
                }
                Err(error) => {
                    tracing::debug!(%error, "reused connection failed; retrying on a new one");
                }
            }
        }
        let mut sender = self.connect().await?;
        let answer = self
            .send(&mut sender, method, path, content_type, body)
            .await?;
        *slot = Some(sender);
        Ok(answer)
    }

    async fn send(
        &self,
        sender: &mut SendRequest<Full<Bytes>>,
        method: &Method,
        path: &str,
        content_type: &HeaderValue,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, content_type.clone())
            .body(Full::new(body))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("cannot connect to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .with_context(|| {
                format!(
                    "TLS handshake with {} as {:?} failed",
                    self.addr,
                    self.server_name.to_str()
                )
            })?;
        *self
            .tls_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = tls.get_ref().1.protocol_version();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "webhook client connection closed with an error");
            }
        });
        self.connections_opened.fetch_add(1, Ordering::Relaxed);
        Ok(sender)
    }
}
