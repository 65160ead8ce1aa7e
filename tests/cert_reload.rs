//! Serving certificate hot reload over real TLS on loopback: the pair lives in a
//! directory laid out like a Kubernetes Secret volume (`..<timestamp>/` directories,
//! `..data` symlink, `tls.crt` and `tls.key` symlinks through it) and is swapped the way
//! the kubelet swaps it, while AdmissionReviews keep flowing over new and kept-alive
//! connections. Which certificate the server presents is read from the handshake
//! itself.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use nodeguard::inventory::SharedInventory;
use nodeguard::metrics::Metrics;
use nodeguard::plumbing::certificate_reload::CertificateReloader;
use nodeguard::plumbing::dev_pki::{DEV_DNS_NAMES, DEV_SERVER_NAME, generate_dev_pki};
use nodeguard::webhook::{self, AdmissionClient, AppState};
use nodeguard_testkit::kubelet::{self, Machine, Write};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Hang guard for a whole test; nothing else waits on the clock.
const HANG_GUARD: Duration = Duration::from_secs(60);
/// Pause between two looks at something expected to happen eventually.
const POLL: Duration = Duration::from_millis(20);
/// Long enough that only a filesystem event can trigger a reload within a test.
const NEVER: Duration = Duration::from_secs(3600);

async fn with_hang_guard(test: impl Future<Output = ()>) {
    tokio::time::timeout(HANG_GUARD, test)
        .await
        .expect("the test hung");
}

/// Polls `condition` until it holds (the hang guard bounds the wait).
async fn eventually<F: Future<Output = bool>>(mut condition: impl FnMut() -> F) {
    while !condition().await {
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------
// Certificates: one CA issuing several serving pairs, as cert-manager does on rotation.

struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A serving pair, and what the tests compare against.
#[derive(Clone)]
struct Pair {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
    not_after: i64,
}

impl TestCa {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "cert-reload test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, -1, 365);
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A serving certificate for the service, valid from `from` to `to` days from today.
    fn issue(&self, from: i64, to: i64) -> Pair {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = DEV_DNS_NAMES.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, DEV_SERVER_NAME);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut params, from, to);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let der = cert.der().to_vec();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: parsed.validity().not_after.timestamp(),
            der,
        }
    }
}

/// Valid from midnight UTC `from` days from today to midnight UTC `to` days from today.
fn set_validity(params: &mut CertificateParams, from: i64, to: i64) {
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    let day = |offset: i64| {
        let date = today.checked_add(jiff::Span::new().days(offset)).unwrap();
        rcgen::date_time_ymd(
            i32::from(date.year()),
            date.month().unsigned_abs(),
            date.day().unsigned_abs(),
        )
    };
    params.not_before = day(from);
    params.not_after = day(to);
}

// ---------------------------------------------------------------------------------------
// A Secret volume, written the way the kubelet's AtomicWriter writes it.

struct SecretVolume {
    root: PathBuf,
    current: Option<String>,
    generation: u32,
}

impl SecretVolume {
    fn new() -> Self {
        static VOLUMES: AtomicUsize = AtomicUsize::new(0);
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "cert-reload-{}-{}",
            std::process::id(),
            VOLUMES.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        Self {
            root,
            current: None,
            generation: 0,
        }
    }

    fn cert_path(&self) -> PathBuf {
        self.root.join("tls.crt")
    }

    fn key_path(&self) -> PathBuf {
        self.root.join("tls.key")
    }

    fn publish_pair(&mut self, pair: &Pair) {
        self.publish(pair.cert_pem.as_bytes(), pair.key_pem.as_bytes());
    }

    /// A new timestamped directory with the payload, a temporary `..data_tmp` symlink to
    /// it renamed over `..data`, the visible symlinks if missing, the old directory gone.
    fn publish(&mut self, cert: &[u8], key: &[u8]) {
        self.generation += 1;
        let stamp = jiff::Timestamp::now()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .strftime("%Y_%m_%d_%H_%M_%S")
            .to_string();
        let name = format!("..{stamp}.{:09}", self.generation);
        let dir = self.root.join(&name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
        std::fs::write(dir.join("ca.crt"), b"").unwrap();
        let tmp = self.root.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.root.join("..data")).unwrap();
        for file in ["tls.crt", "tls.key", "ca.crt"] {
            let link = self.root.join(file);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(file), &link).unwrap();
            }
        }
        if let Some(old) = self.current.replace(name) {
            std::fs::remove_dir_all(self.root.join(old)).unwrap();
        }
    }
}

impl Drop for SecretVolume {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

// ---------------------------------------------------------------------------------------
// The server, its reloader, and a TLS client that reports what the server presented.

struct Server {
    addr: SocketAddr,
    ca_pem: String,
    metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    reloader: JoinHandle<()>,
}

impl Server {
    /// Serves what `volume` holds now, as `nodeguard serve` does, with a reloader
    /// configured by `configure` watching it. Returns once the reloader has started.
    async fn start(
        volume: &SecretVolume,
        ca: &TestCa,
        configure: impl FnOnce(CertificateReloader) -> CertificateReloader,
    ) -> Self {
        let (cert_path, key_path) = (volume.cert_path(), volume.key_path());
        let (tls, certificate) =
            nodeguard::plumbing::tls::server_config_from_files(&cert_path, &key_path).unwrap();
        let metrics = Arc::new(Metrics::new());
        let reloader = configure(CertificateReloader::new(
            cert_path,
            key_path,
            Arc::clone(&certificate),
            metrics.certificate.clone(),
        ));
        let reloader = tokio::spawn(reloader.run());
        // The reloader sets the gauge once its watch is in place.
        let metrics_ = Arc::clone(&metrics);
        eventually(|| {
            let started = expiry(&metrics_) != 0;
            async move { started }
        })
        .await;

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = webhook::router(AppState {
            inventory: SharedInventory::default(),
            config: nodeguard::config::SharedConfig::default(),
            events: None,
            readiness: None,
            refusals: None,
            metrics: metrics.admission.clone(),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(nodeguard::plumbing::https::serve_tls(
            listener,
            tls,
            router,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            ca_pem: ca.pem.clone(),
            metrics,
            stop: Some(stop),
            task,
            reloader,
        }
    }

    fn client(&self) -> AdmissionClient {
        AdmissionClient::new(self.addr, self.ca_pem.as_bytes(), DEV_SERVER_NAME).unwrap()
    }

    /// A new TLS connection, verified against the CA as the API server verifies it.
    async fn connect(&self) -> TlsStream<TcpStream> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(
            nodeguard::plumbing::tls::crypto_provider(),
        )
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(DEV_SERVER_NAME).unwrap(), tcp)
            .await
            .unwrap()
    }

    /// The leaf certificate (DER) a new handshake gets.
    async fn presented(&self) -> Vec<u8> {
        peer_leaf(&self.connect().await)
    }

    /// Waits until new handshakes get `pair`'s certificate.
    async fn presents_eventually(&self, pair: &Pair) {
        eventually(|| async { self.presented().await == pair.der }).await;
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap().unwrap();
        self.reloader.abort();
    }
}

fn peer_leaf(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// The value of the sample `name` (labels included) in the exposition, 0 if absent.
fn sample(metrics: &Metrics, name: &str) -> i64 {
    let text = metrics.encode().unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0, |value| value.parse().unwrap())
}

fn expiry(metrics: &Metrics) -> i64 {
    sample(
        metrics,
        "nodeguard_serving_certificate_expiry_timestamp_seconds",
    )
}

fn reloads(metrics: &Metrics, result: &str) -> i64 {
    sample(
        metrics,
        &format!("nodeguard_serving_certificate_reloads_total{{result=\"{result}\"}}"),
    )
}

// ---------------------------------------------------------------------------------------
// Admission traffic that must never fail while certificates change.

static UIDS: AtomicUsize = AtomicUsize::new(0);

fn node_create() -> (String, Vec<u8>) {
    let uid = format!("uid-{}", UIDS.fetch_add(1, Ordering::Relaxed));
    let machine = Machine::new("worker-1", 1, "10.0.0.1");
    let review = kubelet::node_review(
        &uid,
        Write::Create,
        &kubelet::node_object(&machine),
        None,
        "system:node:worker-1",
    );
    (uid, serde_json::to_vec(&review).unwrap())
}

/// The review answer's verdict, or why it is not a good one.
fn check_answer(uid: &str, status: StatusCode, body: &[u8]) -> Result<(), String> {
    let answer: Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "HTTP {status}, not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        )
    })?;
    let response = &answer["response"];
    if status != StatusCode::OK || response["uid"] != uid || response["allowed"] != true {
        return Err(format!("HTTP {status}: {answer}"));
    }
    Ok(())
}

async fn review_with(client: &AdmissionClient) -> Result<(), String> {
    let (uid, body) = node_create();
    let (status, bytes) = client
        .post("/validate/nodes", body)
        .await
        .map_err(|e| format!("{e:#}"))?;
    check_answer(&uid, status, &bytes)
}

/// Two loops sending reviews until stopped: one opening a new connection for each
/// review, one keeping a single connection alive.
struct Traffic {
    stop: Arc<AtomicBool>,
    fresh_ok: Arc<AtomicUsize>,
    kept_ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    fresh: JoinHandle<()>,
    kept: JoinHandle<usize>,
}

impl Traffic {
    fn start(server: &Server) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let fresh_ok = Arc::new(AtomicUsize::new(0));
        let kept_ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (addr, ca_pem) = (server.addr, server.ca_pem.clone());
        let fresh = tokio::spawn({
            let (stop, ok, failures) = (stop.clone(), fresh_ok.clone(), failures.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let client =
                        AdmissionClient::new(addr, ca_pem.as_bytes(), DEV_SERVER_NAME).unwrap();
                    match review_with(&client).await {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("new connection: {e}"));
                            0
                        }
                    };
                }
            }
        });
        let client = server.client();
        let kept = tokio::spawn({
            let (stop, ok, failures) = (stop.clone(), kept_ok.clone(), failures.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    match review_with(&client).await {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            failures.lock().unwrap().push(format!("kept-alive: {e}"));
                            0
                        }
                    };
                }
                client.connections_opened()
            }
        });
        Self {
            stop,
            fresh_ok,
            kept_ok,
            failures,
            fresh,
            kept,
        }
    }

    /// Waits until each loop has had `n` more reviews answered.
    async fn more_answered(&self, n: usize) {
        let (fresh, kept) = (
            self.fresh_ok.load(Ordering::Relaxed),
            self.kept_ok.load(Ordering::Relaxed),
        );
        eventually(|| async {
            self.fresh_ok.load(Ordering::Relaxed) >= fresh + n
                && self.kept_ok.load(Ordering::Relaxed) >= kept + n
        })
        .await;
    }

    /// Stops both loops; asserts that no review failed and that the kept-alive one
    /// stayed on its first connection.
    async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.fresh.await.unwrap();
        let kept_connections = self.kept.await.unwrap();
        let failures = self.failures.lock().unwrap().clone();
        assert!(failures.is_empty(), "reviews failed: {failures:#?}");
        assert_eq!(
            kept_connections, 1,
            "the kept-alive connection was dropped and reopened"
        );
        assert!(self.fresh_ok.load(Ordering::Relaxed) > 0);
        assert!(self.kept_ok.load(Ordering::Relaxed) > 0);
    }
}

/// A raw HTTP/1.1 connection whose handshake the test saw.
struct RawConnection {
    leaf: Vec<u8>,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl RawConnection {
    async fn open(server: &Server) -> Self {
        let tls = server.connect().await;
        let leaf = peer_leaf(&tls);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(connection);
        Self { leaf, sender }
    }

    async fn review(&mut self) -> Result<(), String> {
        let (uid, body) = node_create();
        let request = http::Request::post("/validate/nodes")
            .header(http::header::HOST, DEV_SERVER_NAME)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        check_answer(&uid, status, &body)
    }
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_pair_is_served_to_new_connections_without_a_failed_review() {
    with_hang_guard(async {
        let ca = TestCa::new();
        let (a, b) = (ca.issue(-1, 30), ca.issue(0, 90));
        assert_ne!(a.not_after, b.not_after);
        let mut volume = SecretVolume::new();
        volume.publish_pair(&a);
        // Only a filesystem event can trigger the reload within the test.
        let server = Server::start(&volume, &ca, |r| r.recheck_every(NEVER)).await;
        assert_eq!(server.presented().await, a.der);
        assert_eq!(expiry(&server.metrics), a.not_after);

        let traffic = Traffic::start(&server);
        let mut open_before = RawConnection::open(&server).await;
        open_before.review().await.unwrap();
        traffic.more_answered(3).await;

        volume.publish_pair(&b);
        server.presents_eventually(&b).await;
        traffic.more_answered(5).await;

        // The connection opened before the swap keeps serving, with its certificate.
        assert_eq!(open_before.leaf, a.der);
        open_before.review().await.unwrap();
        traffic.finish().await;

        assert_eq!(expiry(&server.metrics), b.not_after);
        assert_eq!(reloads(&server.metrics, "loaded"), 1);
        assert_eq!(reloads(&server.metrics, "rejected"), 0);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_pair_is_refused_and_a_later_good_one_is_loaded() {
    with_hang_guard(async {
        let ca = TestCa::new();
        let (a, b) = (ca.issue(-1, 30), ca.issue(0, 90));
        let expired = ca.issue(-30, -1);
        let other_key = generate_dev_pki(&DEV_DNS_NAMES).unwrap().key_pem;
        let mut volume = SecretVolume::new();
        volume.publish_pair(&a);
        let server = Server::start(&volume, &ca, |r| r.recheck_every(NEVER)).await;
        let traffic = Traffic::start(&server);

        let truncated = &b.cert_pem.as_bytes()[..b.cert_pem.len() / 2];
        let broken: [(&str, &[u8], &[u8]); 4] = [
            (
                "a key that is not the certificate's",
                b.cert_pem.as_bytes(),
                other_key.as_bytes(),
            ),
            ("a truncated certificate", truncated, b.key_pem.as_bytes()),
            (
                "garbage instead of a certificate",
                b"\x00garbage\n",
                b.key_pem.as_bytes(),
            ),
            (
                "an expired certificate",
                expired.cert_pem.as_bytes(),
                expired.key_pem.as_bytes(),
            ),
        ];
        for (rejected, (what, cert, key)) in (1..).zip(broken) {
            volume.publish(cert, key);
            eventually(|| async { reloads(&server.metrics, "rejected") >= rejected }).await;
            assert_eq!(reloads(&server.metrics, "rejected"), rejected, "{what}");
            assert_eq!(server.presented().await, a.der, "{what}: A is still served");
            assert_eq!(expiry(&server.metrics), a.not_after, "{what}");
            traffic.more_answered(2).await;
        }

        volume.publish_pair(&b);
        server.presents_eventually(&b).await;
        traffic.more_answered(2).await;
        traffic.finish().await;
        assert_eq!(reloads(&server.metrics, "loaded"), 1);
        assert_eq!(reloads(&server.metrics, "rejected"), 4);
        assert_eq!(expiry(&server.metrics), b.not_after);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_periodic_recheck_alone_picks_up_a_rotation() {
    with_hang_guard(async {
        let ca = TestCa::new();
        let (a, b) = (ca.issue(-1, 30), ca.issue(0, 90));
        let mut volume = SecretVolume::new();
        volume.publish_pair(&a);
        // No filesystem watch at all: only the re-check can notice.
        let server = Server::start(&volume, &ca, |r| {
            r.watch_events(false)
                .recheck_every(Duration::from_millis(100))
        })
        .await;
        let traffic = Traffic::start(&server);
        traffic.more_answered(2).await;

        volume.publish_pair(&b);
        server.presents_eventually(&b).await;
        traffic.more_answered(2).await;
        traffic.finish().await;
        assert_eq!(reloads(&server.metrics, "loaded"), 1);
        assert_eq!(reloads(&server.metrics, "rejected"), 0);
        assert_eq!(expiry(&server.metrics), b.not_after);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plain_files_replaced_in_place_are_picked_up() {
    with_hang_guard(async {
        let ca = TestCa::new();
        let (a, b) = (ca.issue(-1, 30), ca.issue(0, 90));
        // The layout `nodeguard certs --out` writes: plain files, no symlinks.
        let volume = SecretVolume::new();
        std::fs::write(volume.cert_path(), &a.cert_pem).unwrap();
        std::fs::write(volume.key_path(), &a.key_pem).unwrap();
        let server = Server::start(&volume, &ca, |r| r.recheck_every(NEVER)).await;
        let traffic = Traffic::start(&server);

        // Rewritten in place, one file after the other: the pair is briefly mismatched,
        // which may be refused, but the last write is picked up.
        std::fs::write(volume.cert_path(), &b.cert_pem).unwrap();
        std::fs::write(volume.key_path(), &b.key_pem).unwrap();
        server.presents_eventually(&b).await;
        traffic.more_answered(2).await;
        traffic.finish().await;
        assert_eq!(reloads(&server.metrics, "loaded"), 1);
        assert_eq!(expiry(&server.metrics), b.not_after);
        server.shutdown().await;
    })
    .await;
}
