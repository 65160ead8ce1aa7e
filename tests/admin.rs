//! The admin server over real HTTP: liveness, readiness that follows the inventory's
//! sync, and metrics that count what the webhook (over real HTTPS) decided.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use nodeguard::identity::NodeClaim;
use nodeguard::identity::node::NodeDoc;
use nodeguard::inventory::{Inventory, SharedInventory};
use nodeguard::metrics::Metrics;
use nodeguard::plumbing::admin;
use nodeguard::plumbing::dev_pki::{DEV_DNS_NAMES, DEV_SERVER_NAME, generate_dev_pki};
use nodeguard::watch::Readiness;
use nodeguard::webhook::{self, AdmissionClient, AppState};
use nodeguard_testkit::kubelet::{self, Machine, Write};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Hang guard for a whole test; no test waits on the clock otherwise.
const HANG_GUARD: Duration = Duration::from_secs(60);

struct Response {
    status: StatusCode,
    content_type: String,
    body: String,
}

/// A plain HTTP/1.1 GET, as a kubelet probe or a Prometheus scrape makes it.
async fn get(addr: SocketAddr, path: &str) -> Response {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Response {
        status,
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn claim_of(node: &Value) -> NodeClaim {
    let text = node.to_string();
    let doc: NodeDoc<'_> = serde_json::from_str(&text).unwrap();
    NodeClaim::from_doc(&doc).unwrap()
}

fn create(uid: &str, machine: &Machine) -> Vec<u8> {
    let node = kubelet::node_object(machine);
    let user = format!("system:node:{}", machine.name);
    serde_json::to_vec(&kubelet::node_review(
        uid,
        Write::Create,
        &node,
        None,
        &user,
    ))
    .unwrap()
}

/// The webhook (HTTPS) and the admin server (HTTP) sharing one inventory and one set of
/// metrics, as `nodeguard serve` runs them.
struct Servers {
    admin: SocketAddr,
    webhook: AdmissionClient,
    readiness: Readiness,
    inventory: SharedInventory,
    stop: Vec<oneshot::Sender<()>>,
}

async fn start() -> Servers {
    let mut inventory = Inventory::new();
    for machine in [
        Machine::new("worker-1", 1, "10.0.0.1"),
        Machine::new("worker-2", 2, "10.0.0.2"),
    ] {
        inventory.apply_node_as_written(claim_of(&kubelet::node_object(&machine)));
    }
    let inventory = SharedInventory::new(inventory);
    let readiness = Readiness::new();
    let metrics = Arc::new(Metrics::new());
    let mut stop = Vec::new();

    let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin_listener.local_addr().unwrap();
    let (admin_stop, admin_stopped) = oneshot::channel::<()>();
    stop.push(admin_stop);
    let admin_router = admin::router(metrics.admin_state(inventory.clone(), readiness.clone()));
    tokio::spawn(admin::serve(admin_listener, admin_router, async move {
        let _ = admin_stopped.await;
    }));

    let pki = generate_dev_pki(&DEV_DNS_NAMES).unwrap();
    let tls = pki.server_config().unwrap();
    let webhook_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let webhook_addr = webhook_listener.local_addr().unwrap();
    let (webhook_stop, webhook_stopped) = oneshot::channel::<()>();
    stop.push(webhook_stop);
    let webhook_router = webhook::router(AppState {
        inventory: inventory.clone(),
        config: nodeguard::config::SharedConfig::default(),
        events: None,
        readiness: None,
        refusals: None,
        metrics: metrics.admission.clone(),
    });
    tokio::spawn(nodeguard::plumbing::https::serve_tls(
        webhook_listener,
        tls,
        webhook_router,
        async move {
            let _ = webhook_stopped.await;
        },
    ));

    Servers {
        admin: admin_addr,
        webhook: AdmissionClient::new(webhook_addr, pki.ca_pem.as_bytes(), DEV_SERVER_NAME)
            .unwrap(),
        readiness,
        inventory,
        stop,
    }
}

impl Servers {
    fn stop(self) {
        for stop in self.stop {
            let _ = stop.send(());
        }
    }
}

async fn with_hang_guard(test: impl Future<Output = ()>) {
    tokio::time::timeout(HANG_GUARD, test)
        .await
        .expect("the test hung");
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[tokio::test]
async fn healthz_answers_while_the_process_runs() {
    with_hang_guard(async {
        let servers = start().await;
        let response = get(servers.admin, "/healthz").await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.body, "ok");
        servers.stop();
    })
    .await;
}

#[tokio::test]
async fn readyz_follows_the_inventory_sync() {
    with_hang_guard(async {
        let servers = start().await;
        let response = get(servers.admin, "/readyz").await;
        assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.body,
            "not ready: the inventory has not completed its first sync with the API server"
        );

        servers.readiness.set(true);
        let response = get(servers.admin, "/readyz").await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.body, "ok");

        servers.readiness.set(false);
        let response = get(servers.admin, "/readyz").await;
        assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
        servers.stop();
    })
    .await;
}

#[tokio::test]
async fn metrics_count_decisions_by_check_and_report_the_inventory() {
    with_hang_guard(async {
        let servers = start().await;
        let clone = Machine {
            machine_id: Machine::new("worker-1", 1, "10.0.0.1").machine_id,
            ..Machine::new("worker-9", 9, "10.0.0.9")
        };
        let (status, _) = servers
            .webhook
            .post("/validate/nodes", create("uid-clone", &clone))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        let newcomer = Machine::new("worker-3", 3, "10.0.0.3");
        let (status, _) = servers
            .webhook
            .post("/validate/nodes", create("uid-new", &newcomer))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        let (status, _) = servers
            .webhook
            .post("/validate/csrs", b"not json".to_vec())
            .await
            .unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let response = get(servers.admin, "/metrics").await;
        assert_eq!(response.status, StatusCode::OK);
        assert!(
            response.content_type.starts_with("application/openmetrics-text"),
            "{}",
            response.content_type
        );
        let text = response.body;
        for line in [
            "nodeguard_admission_requests_total{webhook=\"nodes\",operation=\"CREATE\",result=\"denied\",check=\"machine-id\"} 1",
            "nodeguard_admission_requests_total{webhook=\"nodes\",operation=\"CREATE\",result=\"allowed\",check=\"\"} 1",
            "nodeguard_admission_requests_total{webhook=\"csrs\",operation=\"\",result=\"error\",check=\"\"} 1",
            "nodeguard_admission_findings_total{check=\"machine-id\",effect=\"deny\"} 1",
            "# TYPE nodeguard_admission_duration_seconds histogram",
            "nodeguard_admission_duration_seconds_count{webhook=\"nodes\"} 2",
            "nodeguard_admission_duration_seconds_count{webhook=\"csrs\"} 1",
            "nodeguard_admission_duration_seconds_bucket{le=\"+Inf\",webhook=\"nodes\"} 2",
            "nodeguard_inventory_nodes 2",
            "nodeguard_inventory_key_bindings 0",
            "nodeguard_inventory_ready 0",
        ] {
            assert!(has_line(&text, line), "missing {line} in\n{text}");
        }
        for bound in ["0.0001", "1.0"] {
            let prefix = format!("nodeguard_admission_duration_seconds_bucket{{le=\"{bound}\",webhook=\"nodes\"}} ");
            assert!(text.lines().any(|l| l.starts_with(&prefix)), "no bucket {bound} in\n{text}");
        }

        // Gauges are read at scrape time: the next scrape sees the change.
        servers
            .inventory
            .write(|inventory| inventory.apply_node_as_written(claim_of(&kubelet::node_object(&newcomer))));
        servers.readiness.set(true);
        let text = get(servers.admin, "/metrics").await.body;
        assert!(has_line(&text, "nodeguard_inventory_nodes 3"), "{text}");
        assert!(has_line(&text, "nodeguard_inventory_ready 1"), "{text}");
        servers.stop();
    })
    .await;
}
