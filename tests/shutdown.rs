//! `nodeguard serve` as a process, stopped the way the kubelet stops it: real signals to
//! the real binary, serving real HTTPS, against the fake API server over TCP. Clients
//! behave like the API server: each keeps one HTTP/1.1 connection alive and sends
//! reviews on it until the server answers `Connection: close`, and nothing a client
//! sent may go unanswered.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use nodeguard_testkit::fake_api;
use nodeguard_testkit::tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fake_api::FakeApi;
use http::{Request, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use nodeguard::plumbing::dev_pki::{DEV_DNS_NAMES, DEV_SERVER_NAME, write_dev_pki};
use nodeguard_testkit::kubelet::{self, Machine, Write};
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Hang guard for anything that should happen soon; no test waits on the clock otherwise.
const GUARD: Duration = Duration::from_secs(30);
/// Pause between two polls of something that changes on its own.
const POLL: Duration = Duration::from_millis(20);
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/nodeguard/leases/nodeguard-recorder";
const IDENTITY: &str = "shutdown-test";

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A running `nodeguard serve`, its fake cluster and its files. Prints the process's log
/// if the test fails, else removes the files.
struct Replica {
    process: Child,
    webhook: SocketAddr,
    admin: SocketAddr,
    tls: TlsConnector,
    dir: PathBuf,
    api: FakeApi,
}

impl Drop for Replica {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("nodeguard.log")).unwrap_or_default();
            eprintln!("--- nodeguard serve log ---\n{log}---");
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Replica {
    /// Starts `nodeguard serve --shutdown-delay <delay>` and waits until it is ready.
    async fn start(name: &str, delay: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("shutdown-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_dev_pki(&dir, &DEV_DNS_NAMES).unwrap();
        let api = FakeApi::new();
        let api_addr = api.serve_http().await;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, FakeApi::kubeconfig(api_addr)).unwrap();
        let (webhook, admin) = (free_port(), free_port());
        let log = std::fs::File::create(dir.join("nodeguard.log")).unwrap();
        let process = Command::new(env!("CARGO_BIN_EXE_nodeguard"))
            .arg("serve")
            .arg("--tls-cert")
            .arg(dir.join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.join("tls.key"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--listen", &webhook.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--namespace", "nodeguard", "--identity", IDENTITY])
            .args(["--shutdown-delay", delay])
            .env("RUST_LOG", "info")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let ca_pem = std::fs::read(dir.join("ca.crt")).unwrap();
        let replica = Self {
            process,
            webhook,
            admin,
            tls: tls::connector(&ca_pem),
            dir,
            api,
        };
        replica
            .until("/readyz answers 200", async || {
                replica.get("/readyz").await.map(|(status, _)| status) == Some(StatusCode::OK)
            })
            .await;
        replica
    }

    fn signal(&self, name: &str) {
        let pid = self
            .process
            .id()
            .expect("the process has not been waited for");
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {pid}: {status}");
    }

    async fn exit_status(&mut self, within: Duration) -> ExitStatus {
        tokio::time::timeout(within, self.process.wait())
            .await
            .unwrap_or_else(|_| panic!("the process still runs after {within:?}"))
            .unwrap()
    }

    /// A plain HTTP/1.1 GET on the admin port; `None` if it cannot connect.
    async fn get(&self, path: &str) -> Option<(StatusCode, String)> {
        let tcp = TcpStream::connect(self.admin).await.ok()?;
        let (mut sender, connection) = http1::handshake(TokioIo::new(tcp)).await.ok()?;
        tokio::spawn(connection);
        let request = Request::get(path)
            .header(header::HOST, self.admin.to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.ok()?;
        let status = response.status();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// A TLS connection to the webhook, offering `alpn`.
    async fn connect(&self, alpn: &[u8]) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.webhook).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let server_name = ServerName::try_from(DEV_SERVER_NAME).unwrap();
        let tls = with_alpn(&self.tls, alpn)
            .connect(server_name, tcp)
            .await
            .unwrap();
        let negotiated = tls.get_ref().1.alpn_protocol();
        assert_eq!(negotiated, Some(alpn), "ALPN");
        tls
    }

    /// An HTTP/1.1 connection to the webhook, as the API server keeps one.
    async fn http1(&self) -> http1::SendRequest<Body> {
        let tls = self.connect(b"http/1.1").await;
        let (sender, connection) = http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(connection);
        sender
    }

    fn refuses_connections(&self) -> impl AsyncFn() -> bool {
        let webhook = self.webhook;
        async move || {
            matches!(TcpStream::connect(webhook).await,
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused)
        }
    }

    /// Polls `condition` until it holds; panics after [`GUARD`].
    async fn until(&self, what: &str, condition: impl AsyncFn() -> bool) {
        let polling = async {
            while !condition().await {
                tokio::time::sleep(POLL).await;
            }
        };
        if tokio::time::timeout(GUARD, polling).await.is_err() {
            panic!("{what}: not after {GUARD:?}");
        }
    }
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn with_alpn(connector: &TlsConnector, alpn: &[u8]) -> TlsConnector {
    let mut config = (*connector.config().clone()).clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// A kubelet's Node registration, as the API server wraps it.
fn review(uid: &str) -> Bytes {
    let machine = Machine::new("worker-1", 1, "10.0.0.1");
    let node = kubelet::node_object(&machine);
    let review = kubelet::node_review(uid, Write::Create, &node, None, "system:node:worker-1");
    Bytes::from(serde_json::to_vec(&review).unwrap())
}

/// Review `uid`, sent whole.
fn post_review(uid: &str) -> Request<Body> {
    let body = review(uid);
    let length = body.len();
    post(BodyExt::boxed_unsync(Full::new(body)), length)
}

fn post(body: Body, length: usize) -> Request<Body> {
    Request::post("/validate/nodes")
        .header(header::HOST, DEV_SERVER_NAME)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, length)
        .body(body)
        .unwrap()
}

/// What the webhook answered to review `uid`: asserts it is a whole 200 AdmissionReview
/// allowing it, and returns whether the server said `Connection: close`.
async fn answered(response: http::Response<hyper::body::Incoming>, uid: &str) -> bool {
    let status = response.status();
    let close = response
        .headers()
        .get(header::CONNECTION)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        status,
        StatusCode::OK,
        "{uid}: {}",
        String::from_utf8_lossy(&body)
    );
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["kind"], "AdmissionReview", "{uid}: {answer}");
    assert_eq!(answer["response"]["uid"], uid, "{answer}");
    assert_eq!(answer["response"]["allowed"], true, "{uid}: {answer}");
    close
}

/// A request whose body the test sends piece by piece.
struct SlowRequest {
    uid: String,
    rest: Bytes,
    body: mpsc::Sender<Bytes>,
    response: tokio::task::JoinHandle<hyper::Result<http::Response<hyper::body::Incoming>>>,
}

impl SlowRequest {
    /// Sends the head and half the body.
    async fn start(mut sender: http1::SendRequest<Body>, uid: &str) -> Self {
        let mut review = review(uid);
        let (body, chunks) = mpsc::channel::<Bytes>(1);
        let frames = futures::stream::unfold(chunks, |mut chunks| async move {
            let chunk = chunks.recv().await?;
            Some((Ok::<_, Infallible>(Frame::data(chunk)), chunks))
        });
        let request = post(BodyExt::boxed_unsync(StreamBody::new(frames)), review.len());
        let response = tokio::spawn(async move { sender.send_request(request).await });
        let rest = review.split_off(review.len() / 2);
        body.send(review).await.unwrap();
        Self {
            uid: uid.to_owned(),
            rest,
            body,
            response,
        }
    }

    /// Sends the rest of the body a few bytes at a time, and returns whether the answer
    /// said `Connection: close`.
    async fn finish(mut self) -> bool {
        while !self.rest.is_empty() {
            let chunk = self.rest.split_to(self.rest.len().min(512));
            self.body.send(chunk).await.unwrap();
            tokio::time::sleep(POLL).await;
        }
        drop(self.body);
        let response = tokio::time::timeout(GUARD, self.response)
            .await
            .expect("no answer to the slow request")
            .unwrap()
            .unwrap();
        answered(response, &self.uid).await
    }
}

/// How many reviews the API-server-like clients sent, and how many were answered.
#[derive(Default)]
struct Tally {
    sent: AtomicUsize,
    answered: AtomicUsize,
}

/// Sends reviews on one kept-alive connection until the server answers
/// `Connection: close`, as the API server does before it moves to another endpoint.
/// Every review must get its whole answer: any error fails the test.
async fn keep_reviewing(mut sender: http1::SendRequest<Body>, client: usize, tally: Arc<Tally>) {
    for n in 0.. {
        let uid = format!("client-{client}-{n}");
        sender.ready().await.unwrap();
        tally.sent.fetch_add(1, Ordering::SeqCst);
        let response = sender
            .send_request(post_review(&uid))
            .await
            .unwrap_or_else(|error| panic!("{uid}: no answer: {error:?}"));
        let close = answered(response, &uid).await;
        tally.answered.fetch_add(1, Ordering::SeqCst);
        if close {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_traffic_loses_no_review() {
    let mut replica = Replica::start("traffic", "2s").await;
    // The replica records: its lease must be released on the way out.
    replica
        .until("the replica holds the lease", async || {
            replica
                .api
                .get(LEASE)
                .is_some_and(|lease| lease["spec"]["holderIdentity"] == IDENTITY)
        })
        .await;

    let tally = Arc::new(Tally::default());
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..4 {
        let sender = replica.http1().await;
        clients.spawn(keep_reviewing(sender, client, Arc::clone(&tally)));
    }
    let slow = SlowRequest::start(replica.http1().await, "slow").await;
    replica
        .until("the clients are reviewing", async || {
            tally.answered.load(Ordering::SeqCst) >= 8
        })
        .await;

    replica.signal("TERM");
    replica
        .until("/readyz answers 503 after SIGTERM", async || {
            replica.get("/readyz").await
                == Some((
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: shutting down".into(),
                ))
        })
        .await;
    // Unready, and still answering, on a new connection too: with `Connection: close`.
    let mut late = replica.http1().await;
    let response = late.send_request(post_review("late")).await.unwrap();
    assert!(
        answered(response, "late").await,
        "no Connection: close while shutting down"
    );

    // Every kept-alive client was told to move on, with every review answered.
    tokio::time::timeout(GUARD, async {
        while let Some(client) = clients.join_next().await {
            client.unwrap();
        }
    })
    .await
    .expect("a client was never told Connection: close");
    assert_eq!(
        tally.sent.load(Ordering::SeqCst),
        tally.answered.load(Ordering::SeqCst)
    );

    // The drain delay is over once the port refuses connections; the slow request,
    // half sent, is still open: it completes, while the admin server still reports.
    replica
        .until("the webhook stops accepting", replica.refuses_connections())
        .await;
    assert_eq!(
        replica.get("/readyz").await,
        Some((
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down".into()
        ))
    );
    assert!(
        slow.finish().await,
        "the slow request's answer must close its connection"
    );

    let status = replica.exit_status(GUARD).await;
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(replica.refuses_connections()().await);
    assert!(
        replica.get("/healthz").await.is_none(),
        "the admin server still answers"
    );
    let lease = replica.api.get(LEASE).unwrap();
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "not released: {lease}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_gets_a_goaway_at_once_and_a_second_sigterm_stops_at_once() {
    // A delay far longer than the guards below, so only the second signal can end it.
    let mut replica = Replica::start("second-signal", "300s").await;
    let stream = replica.connect(b"h2").await;
    let (mut h2, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    let h2_connection = tokio::spawn(connection);
    let response = h2.send_request(post_review("h2")).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert!(!answered(response, "h2").await);
    let slow = SlowRequest::start(replica.http1().await, "cut").await;

    replica.signal("TERM");
    // The HTTP/2 connection is closed by a GOAWAY (nothing else closes it: the client
    // is idle) while the webhook still accepts and answers.
    tokio::time::timeout(GUARD, h2_connection)
        .await
        .expect("the HTTP/2 connection got no GOAWAY")
        .unwrap()
        .unwrap();
    let mut late = replica.http1().await;
    let response = late.send_request(post_review("late")).await.unwrap();
    assert!(answered(response, "late").await);

    replica.signal("TERM");
    // Far sooner than the drain delay, with the slow request still open.
    replica.exit_status(Duration::from_secs(10)).await;
    drop(slow);
}
