//! The webhook over real HTTPS: `serve_tls` on a loopback port with a CA-signed serving
//! certificate, called by `AdmissionClient` the way the API server calls it (SNI
//! `nodeguard.nodeguard.svc`, verified against the CA), with reviews shaped like the
//! API server's wrapping objects shaped like a kubelet's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use nodeguard_testkit::tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use nodeguard::identity::csr::CsrDoc;
use nodeguard::identity::node::NodeDoc;
use nodeguard::identity::{KeyBinding, KeyFingerprint, NodeClaim};
use nodeguard::inventory::{Inventory, SharedInventory};
use nodeguard::metrics::Metrics;
use nodeguard::plumbing::dev_pki::{
    DEV_DNS_NAMES, DEV_SERVER_NAME, DevPki, generate_dev_pki, generate_dev_pki_for_key,
};
use nodeguard::webhook::{self, AdmissionClient, AppState, ClientOptions};
use nodeguard_testkit::kubelet::{self, Machine, Requester, Write};
use rcgen::{KeyPair, PublicKeyData};
use rustls::ProtocolVersion;
use rustls::version::{TLS12, TLS13};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

const RSA_PKCS8: &str = include_str!("fixtures/keys/rsa-2048.pkcs8.pem");
const RSA_PKCS1: &str = include_str!("fixtures/keys/rsa-2048.pkcs1.pem");
const POD_REVIEW: &str =
    include_str!("fixtures/real/admissionreview-v1-pod-create-gke-kube-rs.json");

/// Hang guard for a whole test; no test waits on the clock otherwise.
const HANG_GUARD: Duration = Duration::from_secs(60);
/// A machine-id that several AKS-like nodes share, but that is no built-in placeholder.
const SHARED_MACHINE_ID: &str = "5d3a1c0e9b7f4e2a8c6d1f0b3e5a7c9d";

fn worker_1() -> Machine {
    Machine::new("worker-1", 1, "10.0.0.1")
}

fn worker_2() -> Machine {
    Machine::new("worker-2", 2, "10.0.0.2")
}

fn sharing(name: &str, seed: u8, ip: &str) -> Machine {
    Machine {
        machine_id: SHARED_MACHINE_ID.to_string(),
        ..Machine::new(name, seed, ip)
    }
}

fn claim_of(node: &Value) -> NodeClaim {
    let text = node.to_string();
    let doc: NodeDoc<'_> = serde_json::from_str(&text).unwrap();
    NodeClaim::from_doc(&doc).unwrap()
}

fn binding_of(csr: &Value) -> Option<KeyBinding> {
    let text = csr.to_string();
    let doc: CsrDoc<'_> = serde_json::from_str(&text).unwrap();
    KeyBinding::from_doc(&doc)
}

/// The cluster every test runs against: two workers, two nodes sharing one machine-id
/// since before nodeguard (the ledger's first sight), and worker-1's kubelet key bound
/// to it by an issued CSR.
struct Cluster {
    inventory: Inventory,
    worker_1_key: KeyPair,
}

fn cluster() -> Cluster {
    let mut inventory = Inventory::new();
    for machine in [
        worker_1(),
        worker_2(),
        sharing("aks-a", 3, "10.0.0.3"),
        sharing("aks-b", 4, "10.0.0.4"),
    ] {
        inventory.apply_node_as_written(claim_of(&kubelet::node_object(&machine)));
    }
    nodeguard::policy::sharing::record_first_sight(
        &mut inventory,
        &nodeguard::policy::Config::default(),
        jiff::Timestamp::now(),
    );
    let worker_1_key = kubelet::kubelet_key().unwrap();
    let pem = kubelet::csr_pem(&worker_1_key, "worker-1", &[], &[]).unwrap();
    let csr = kubelet::csr_object(
        "csr-worker-1",
        kubelet::CLIENT_SIGNER,
        &pem,
        &Requester::Bootstrap {
            token_id: "07401b".into(),
        },
    );
    let binding = binding_of(&kubelet::issued(csr));
    assert!(binding.is_some(), "an issued kubelet CSR binds its key");
    inventory.apply_csr("csr-worker-1", binding);
    Cluster {
        inventory,
        worker_1_key,
    }
}

struct TestServer {
    addr: SocketAddr,
    ca_pem: String,
    /// Notified when a request's head reaches the router, before its body is read.
    requests_seen: Arc<Notify>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    /// Serves over TLS with `pki`'s certificate and `key_pem` as the key, both read from
    /// files as `nodeguard serve` reads them.
    async fn start(pki: &DevPki, key_pem: &str, inventory: Inventory) -> Self {
        static SERVERS: AtomicUsize = AtomicUsize::new(0);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "webhook-https-{}-{}",
            std::process::id(),
            SERVERS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert_path, &pki.cert_pem).unwrap();
        std::fs::write(&key_path, key_pem).unwrap();
        let (tls, _certificate) =
            nodeguard::plumbing::tls::server_config_from_files(&cert_path, &key_path).unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests_seen = Arc::new(Notify::new());
        let seen = Arc::clone(&requests_seen);
        let router = webhook::router(AppState {
            inventory: SharedInventory::new(inventory),
            config: nodeguard::config::SharedConfig::default(),
            events: None,
            readiness: None,
            refusals: None,
            metrics: Metrics::new().admission,
        })
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                seen.notify_one();
                next.run(request)
            },
        ));
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
            ca_pem: pki.ca_pem.clone(),
            requests_seen,
            stop: Some(stop),
            task,
        }
    }

    async fn ecdsa(inventory: Inventory) -> Self {
        let pki = generate_dev_pki(&DEV_DNS_NAMES).unwrap();
        Self::start(&pki, &pki.key_pem.clone(), inventory).await
    }

    fn client(&self) -> AdmissionClient {
        AdmissionClient::new(self.addr, self.ca_pem.as_bytes(), DEV_SERVER_NAME).unwrap()
    }

    fn client_with(&self, options: ClientOptions) -> AdmissionClient {
        AdmissionClient::with_options(self.addr, self.ca_pem.as_bytes(), DEV_SERVER_NAME, options)
            .unwrap()
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap().unwrap();
    }
}

/// POSTs a review and returns the status and the parsed answer.
async fn review(client: &AdmissionClient, path: &str, body: &Value) -> (StatusCode, Value) {
    let (status, bytes) = client
        .post(path, serde_json::to_vec(body).unwrap())
        .await
        .unwrap();
    let answer = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{status}: not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, answer)
}

async fn text(client: &AdmissionClient, path: &str, body: Vec<u8>) -> (StatusCode, String) {
    let (status, bytes) = client.post(path, body).await.unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn create(uid: &str, machine: &Machine) -> Value {
    let node = kubelet::node_object(machine);
    let user = format!("system:node:{}", machine.name);
    kubelet::node_review(uid, Write::Create, &node, None, &user)
}

fn allowed(uid: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": { "uid": uid, "allowed": true }
    })
}

fn allowed_with_warnings(uid: &str, warnings: &[&str]) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": { "uid": uid, "allowed": true, "warnings": warnings }
    })
}

/// A refused registration: 422 Invalid (after a 403 the kubelet would read the Node and
/// log nothing of the message).
fn refused_registration(uid: &str, message: &str) -> Value {
    let mut answer = denied(uid, message);
    answer["response"]["status"]["reason"] = json!("Invalid");
    answer["response"]["status"]["code"] = json!(422);
    answer
}

/// A refused status write or CSR.
fn denied(uid: &str, message: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {
            "uid": uid,
            "allowed": false,
            "status": {
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "Forbidden",
                "code": 403
            }
        }
    })
}

fn machine_id_clone_message(holder: &Machine) -> String {
    format!(
        "nodeguard [machine-id]: machine-id {} is already used by node \"{}\"; this machine looks \
         like a clone of {name}: give it a new identity (rm /etc/machine-id && \
         systemd-machine-id-setup, then reboot) or delete node {name} if it is gone",
        holder.machine_id,
        holder.name,
        name = holder.name
    )
}

/// worker-1's disk copied into a VM that was renamed: new name, worker-1's machine-id.
fn renamed_clone_of_worker_1() -> Machine {
    Machine {
        machine_id: worker_1().machine_id,
        ..Machine::new("worker-9", 9, "10.0.0.9")
    }
}

async fn with_hang_guard(test: impl Future<Output = ()>) {
    tokio::time::timeout(HANG_GUARD, test)
        .await
        .expect("the test hung");
}

#[tokio::test]
async fn a_new_node_and_a_kubelet_restart_are_allowed() {
    with_hang_guard(async {
        let server = TestServer::ecdsa(cluster().inventory).await;
        let client = server.client();

        let newcomer = Machine::new("worker-3", 5, "10.0.0.5");
        let (status, answer) =
            review(&client, "/validate/nodes", &create("uid-new", &newcomer)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer, allowed("uid-new"));

        // The kubelet re-sends its CREATE on every restart, from the same machine.
        let (status, answer) = review(
            &client,
            "/validate/nodes",
            &create("uid-restart", &worker_1()),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer, allowed("uid-restart"));
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_machine_id_clone_under_a_new_name_is_denied_naming_the_holder() {
    with_hang_guard(async {
        let server = TestServer::ecdsa(cluster().inventory).await;
        let (status, answer) = review(
            &server.client(),
            "/validate/nodes",
            &create("uid-clone", &renamed_clone_of_worker_1()),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            answer,
            refused_registration("uid-clone", &machine_id_clone_message(&worker_1()))
        );
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn the_clone_patching_the_original_nodes_status_is_denied() {
    with_hang_guard(async {
        let server = TestServer::ecdsa(cluster().inventory).await;
        let original = worker_1();
        let clone = Machine {
            system_uuid: "564d8f2a-1c3b-4e5d-9f60-718293a4b5c6".into(),
            ..original.rebooted("9f0e8d7c-6b5a-4938-2716-a5b4c3d2e1f0")
        };
        let body = kubelet::node_review(
            "uid-patch",
            Write::StatusPatch,
            &kubelet::node_object(&clone),
            Some(&kubelet::node_object(&original)),
            "system:node:worker-1",
        );
        let (_, answer) = review(&server.client(), "/validate/nodes", &body).await;
        let message = format!(
            "nodeguard [identity-drift]: node \"worker-1\" runs with system UUID {}…, but this \
             write reports 564d8f2a…: a second machine is writing as worker-1 with its \
             credentials; shut that machine down and give it a new identity, or if worker-1 \
             really moved to new hardware, delete node worker-1 and let it re-register. This \
             machine's writes are let through once worker-1 has had no status written for 10m",
            &original.system_uuid[..8]
        );
        assert_eq!(answer, denied("uid-patch", &message));
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_machine_id_two_other_nodes_share_is_allowed_with_a_short_warning() {
    with_hang_guard(async {
        let server = TestServer::ecdsa(cluster().inventory).await;
        let newcomer = sharing("aks-c", 6, "10.0.0.6");
        let (status, answer) = review(
            &server.client(),
            "/validate/nodes",
            &create("uid-shared", &newcomer),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let warning = "nodeguard [machine-id]: machine-id 5d3a1c0e9b7f4… is shared by 2 nodes \
                       (e.g. aks-a); not proof of a clone";
        assert!(warning.chars().count() <= 120);
        assert_eq!(answer, allowed_with_warnings("uid-shared", &[warning]));
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_csr_reusing_a_bound_key_is_denied_and_other_signers_pass_untouched() {
    with_hang_guard(async {
        let Cluster {
            inventory,
            worker_1_key,
        } = cluster();
        let server = TestServer::ecdsa(inventory).await;
        let client = server.client();
        // The renamed clone joins with a bootstrap token, but asks with worker-1's key.
        let pem = kubelet::csr_pem(&worker_1_key, "worker-9", &[], &[]).unwrap();
        let joining = Requester::Bootstrap {
            token_id: "abcdef".into(),
        };
        let csr = kubelet::csr_object("csr-x7k2p", kubelet::CLIENT_SIGNER, &pem, &joining);
        let (status, answer) = review(&client, "/validate/csrs", &kubelet::csr_review("uid-csr", &csr)).await;
        assert_eq!(status, StatusCode::OK);
        let fingerprint = KeyFingerprint::of_spki_der(&worker_1_key.subject_public_key_info());
        let message = format!(
            "nodeguard [key-fingerprint]: the key of this CSR (SHA-256 {fingerprint}) is already \
             bound to node \"worker-1\"; this machine carries worker-1's kubelet credentials: remove \
             /var/lib/kubelet/pki/kubelet-client-* and /etc/kubernetes/kubelet.conf, then re-join \
             with a bootstrap token"
        );
        assert_eq!(answer, denied("uid-csr", &message));

        // The same request under a signer that does not make nodes is none of our business.
        let other = kubelet::csr_object("csr-app", "example.com/app-client", &pem, &joining);
        let (status, answer) = review(&client, "/validate/csrs", &kubelet::csr_review("uid-other", &other)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer, allowed("uid-other"));
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_dry_run_gets_the_same_decision() {
    with_hang_guard(async {
        let server = TestServer::ecdsa(cluster().inventory).await;
        let client = server.client();
        let mut clone = create("uid-dry-clone", &renamed_clone_of_worker_1());
        clone["request"]["dryRun"] = json!(true);
        let (_, answer) = review(&client, "/validate/nodes", &clone).await;
        assert_eq!(
            answer,
            refused_registration("uid-dry-clone", &machine_id_clone_message(&worker_1()))
        );

        let mut newcomer = create("uid-dry-new", &Machine::new("worker-3", 5, "10.0.0.5"));
        newcomer["request"]["dryRun"] = json!(true);
        let (_, answer) = review(&client, "/validate/nodes", &newcomer).await;
        assert_eq!(answer, allowed("uid-dry-new"));
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn malformed_reviews_get_400_with_the_reason() {
    with_hang_guard(async {
        let server = TestServer::ecdsa(cluster().inventory).await;
        let client = server.client();

        let (status, message) = text(
            &client,
            "/validate/nodes",
            b"{\"apiVersion\": \"admission".to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message.starts_with("the body is not JSON: "), "{message}");
        assert!(!message.contains('\n'), "{message}");

        let mut wrong_version = create("uid-v1beta1", &worker_2());
        wrong_version["apiVersion"] = json!("admission.k8s.io/v1beta1");
        let (status, message) = text(
            &client,
            "/validate/nodes",
            serde_json::to_vec(&wrong_version).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            message,
            "apiVersion is \"admission.k8s.io/v1beta1\"; nodeguard answers admission.k8s.io/v1 only"
        );

        let mut no_uid = create("", &worker_2());
        no_uid["request"].as_object_mut().unwrap().remove("uid");
        let (status, message) = text(
            &client,
            "/validate/nodes",
            serde_json::to_vec(&no_uid).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(message, "request.uid is empty");

        let (status, message) =
            text(&client, "/validate/nodes", POD_REVIEW.as_bytes().to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            message,
            "request.kind is \"Pod\", but /validate/nodes reviews Node only"
        );

        let node_review = serde_json::to_vec(&create("uid-misrouted", &worker_2())).unwrap();
        let (status, message) = text(&client, "/validate/csrs", node_review).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            message,
            "request.kind is \"Node\", but /validate/csrs reviews \
             CertificateSigningRequest.certificates.k8s.io only"
        );

        let mut bad_object = create("uid-bad-object", &worker_2());
        bad_object["request"]["object"]["metadata"] = json!("worker-2");
        let (status, message) = text(
            &client,
            "/validate/nodes",
            serde_json::to_vec(&bad_object).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            message.starts_with("request.object is not a Node: invalid type: string \"worker-2\""),
            "{message}"
        );

        // The connection survives every one of them.
        assert_eq!(client.connections_opened(), 1);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn unknown_paths_are_404_and_other_methods_405() {
    with_hang_guard(async {
        let server = TestServer::ecdsa(cluster().inventory).await;
        let client = server.client();
        let body = serde_json::to_vec(&create("uid-path", &worker_2())).unwrap();
        let (status, _) = client
            .post("/validate/services", body.clone())
            .await
            .unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = client
            .request(Method::GET, "/validate/nodes", Vec::new())
            .await
            .unwrap();
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        server.shutdown().await;
    })
    .await;
}

/// A Node whose image list makes its JSON about `bytes` long: the largest Node objects
/// are kubelets reporting hundreds of images.
fn node_of_size(machine: &Machine, bytes: usize) -> Value {
    let mut node = kubelet::node_object(machine);
    let image = |i: usize| {
        json!({
            "names": [format!("registry.example.com/team/service-{i:06}@sha256:{}", "0".repeat(64))],
            "sizeBytes": 183413119,
        })
    };
    let each = image(0).to_string().len() + 1;
    node["status"]["images"] = (0..bytes / each).map(image).collect();
    node
}

#[tokio::test]
async fn the_largest_review_the_api_server_sends_is_decided_not_refused_for_its_size() {
    with_hang_guard(async {
        let server = TestServer::ecdsa(cluster().inventory).await;
        let client = server.client();
        // A status write of a Node as large as etcd stores, object and old object: over
        // 3 MiB each as JSON. A 413 would make the API server fail open.
        let original = worker_1();
        let clone = Machine {
            system_uuid: "564d8f2a-1c3b-4e5d-9f60-718293a4b5c6".into(),
            ..original.rebooted("9f0e8d7c-6b5a-4938-2716-a5b4c3d2e1f0")
        };
        let body = kubelet::node_review(
            "uid-large",
            Write::StatusPatch,
            &node_of_size(&clone, 3_500_000),
            Some(&node_of_size(&original, 3_500_000)),
            "system:node:worker-1",
        );
        let body = serde_json::to_vec(&body).unwrap();
        assert!(body.len() > 7_000_000, "{}", body.len());
        let (status, answer) = client.post("/validate/nodes", body).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(answer["response"]["allowed"], json!(false), "{answer}");
        assert!(
            answer["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .starts_with("nodeguard [identity-drift]")
        );
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_body_larger_than_any_review_is_413_and_the_server_carries_on() {
    with_hang_guard(async {
        let server = TestServer::ecdsa(cluster().inventory).await;
        let client = server.client();
        let body = vec![b' '; webhook::MAX_BODY_BYTES + 1];
        let (status, _) = client.post("/validate/nodes", body).await.unwrap();
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

        // The server is unharmed: the next review is answered (on a new connection if
        // the server closed the one whose body it did not read).
        let (status, answer) = review(
            &client,
            "/validate/nodes",
            &create("uid-after", &worker_2()),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer, allowed("uid-after"));
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn only_json_reviews_of_the_endpoints_own_kind_are_answered() {
    with_hang_guard(async {
        let server = TestServer::ecdsa(cluster().inventory).await;
        let client = server.client();
        let body = serde_json::to_vec(&create("uid-yaml", &worker_2())).unwrap();
        let (status, message) = client
            .request_as(Method::POST, "/validate/nodes", "text/plain", body)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            String::from_utf8_lossy(&message),
            "Content-Type is \"text/plain\"; an AdmissionReview is sent as application/json"
        );

        // A review that says it is about a Node but carries another object.
        let mut pod = create("uid-pod", &worker_2());
        pod["request"]["object"]["kind"] = json!("Pod");
        let (status, message) = text(
            &client,
            "/validate/nodes",
            serde_json::to_vec(&pod).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            message,
            "request.object is v1/Pod, but /validate/nodes reviews v1 Node only"
        );
        let mut untyped = create("uid-untyped", &worker_2());
        let object = untyped["request"]["object"].as_object_mut().unwrap();
        object.remove("kind");
        object.remove("apiVersion");
        let (status, message) = text(
            &client,
            "/validate/nodes",
            serde_json::to_vec(&untyped).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            message,
            "request.object is an object without apiVersion and kind, but /validate/nodes \
             reviews v1 Node only"
        );
        server.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_for_a_free_slot_instead_of_failing() {
    with_hang_guard(async {
        let server = TestServer::ecdsa(cluster().inventory).await;
        let opener = server.client();
        let mut idle = Vec::new();
        for _ in 0..nodeguard::plumbing::https::MAX_CONNECTIONS {
            idle.push(opener.open_idle().await.unwrap());
        }
        let client = server.client();
        let waiting = tokio::spawn(async move {
            review(
                &client,
                "/validate/nodes",
                &create("uid-waits", &worker_2()),
            )
            .await
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !waiting.is_finished(),
            "a connection over the limit was served"
        );
        drop(idle.pop());
        let (status, answer) = waiting.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer, allowed("uid-waits"));
        drop(idle);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn tls_1_2_only_and_tls_1_3_only_clients_are_both_served() {
    with_hang_guard(async {
        let server = TestServer::ecdsa(cluster().inventory).await;
        for (version, expected) in [
            (&TLS12, ProtocolVersion::TLSv1_2),
            (&TLS13, ProtocolVersion::TLSv1_3),
        ] {
            let client = server.client_with(ClientOptions {
                tls_versions: vec![version],
                ..ClientOptions::default()
            });
            let (status, answer) =
                review(&client, "/validate/nodes", &create("uid-tls", &worker_2())).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(answer, allowed("uid-tls"));
            assert_eq!(client.tls_version(), Some(expected));
        }
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_client_expecting_another_name_refuses_the_certificate_and_others_carry_on() {
    with_hang_guard(async {
        let server = TestServer::ecdsa(cluster().inventory).await;
        let stranger =
            AdmissionClient::new(server.addr, server.ca_pem.as_bytes(), "other.example").unwrap();
        let body = serde_json::to_vec(&create("uid-sni", &worker_2())).unwrap();
        let error = stranger.post("/validate/nodes", body).await.unwrap_err();
        assert!(format!("{error:#}").contains("TLS handshake"), "{error:#}");

        let (status, _) = review(
            &server.client(),
            "/validate/nodes",
            &create("uid-ok", &worker_2()),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn several_reviews_share_one_kept_alive_connection() {
    with_hang_guard(async {
        let server = TestServer::ecdsa(cluster().inventory).await;
        let client = server.client();
        for n in 0..5 {
            let uid = format!("uid-{n}");
            let (_, answer) = review(&client, "/validate/nodes", &create(&uid, &worker_2())).await;
            assert_eq!(answer, allowed(&uid));
            let (_, answer) = review(
                &client,
                "/validate/nodes",
                &create(&format!("{uid}-clone"), &renamed_clone_of_worker_1()),
            )
            .await;
            assert_eq!(answer["response"]["allowed"], json!(false));
        }
        assert_eq!(client.connections_opened(), 1);
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_rsa_certificate_with_a_pkcs1_key_serves_the_same_answers() {
    with_hang_guard(async {
        let pki = generate_dev_pki_for_key(&DEV_DNS_NAMES, RSA_PKCS8).unwrap();
        let server = TestServer::start(&pki, RSA_PKCS1, cluster().inventory).await;
        for version in [&TLS12, &TLS13] {
            let client = server.client_with(ClientOptions {
                tls_versions: vec![version],
                ..ClientOptions::default()
            });
            let (_, answer) = review(
                &client,
                "/validate/nodes",
                &create("uid-rsa-ok", &worker_2()),
            )
            .await;
            assert_eq!(answer, allowed("uid-rsa-ok"));
            let (_, answer) = review(
                &client,
                "/validate/nodes",
                &create("uid-rsa-clone", &renamed_clone_of_worker_1()),
            )
            .await;
            assert_eq!(
                answer,
                refused_registration("uid-rsa-clone", &machine_id_clone_message(&worker_1()))
            );
        }
        server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn after_shutdown_the_server_accepts_nothing_more() {
    with_hang_guard(async {
        let server = TestServer::ecdsa(cluster().inventory).await;
        let client = server.client();
        let (status, _) = review(
            &client,
            "/validate/nodes",
            &create("uid-before", &worker_2()),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (addr, ca_pem) = (server.addr, server.ca_pem.clone());
        // The kept-alive connection is idle, so the drain closes it at once.
        server.shutdown().await;
        let late = AdmissionClient::new(addr, ca_pem.as_bytes(), DEV_SERVER_NAME).unwrap();
        let body = serde_json::to_vec(&create("uid-after", &worker_2())).unwrap();
        assert!(late.post("/validate/nodes", body).await.is_err());
    })
    .await;
}

#[tokio::test]
async fn a_review_in_flight_when_shutdown_starts_is_still_answered() {
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    with_hang_guard(async {
        let mut server = TestServer::ecdsa(cluster().inventory).await;
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let mut tls = tls::connector(server.ca_pem.as_bytes())
            .connect(ServerName::try_from(DEV_SERVER_NAME).unwrap(), tcp)
            .await
            .unwrap();

        // Headers and half the body are sent, and the server has begun the request.
        let body = serde_json::to_vec(&create("uid-in-flight", &worker_2())).unwrap();
        let (first_half, second_half) = body.split_at(body.len() / 2);
        let head = format!(
            "POST /validate/nodes HTTP/1.1\r\nHost: {DEV_SERVER_NAME}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(first_half).await.unwrap();
        tls.flush().await.unwrap();
        server.requests_seen.notified().await;

        // Shutdown starts: once new connections are refused, the drain is under way.
        if let Some(stop) = server.stop.take() {
            let _ = stop.send(());
        }
        while tokio::net::TcpStream::connect(server.addr).await.is_ok() {
            tokio::task::yield_now().await;
        }

        tls.write_all(second_half).await.unwrap();
        tls.flush().await.unwrap();
        let mut response = Vec::new();
        tls.read_to_end(&mut response).await.unwrap();
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        let answer: Value =
            serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap_or_default()).unwrap();
        assert_eq!(answer, allowed("uid-in-flight"));
        server.task.await.unwrap().unwrap();
    })
    .await;
}

/// A kubelet's pods/status write of `web-1` on worker-1, as the API server reviews it:
/// the status before (the original's sandbox 10.244.2.3 and container d504…) and after.
fn pod_status_review(uid: &str, written: Value) -> Value {
    let pod = |status: Value| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "6f1c0c3e-4b7e-4d52-9a51-0a3c5b1f2e11",
                "managedFields": [{"manager": "kubelet", "operation": "Update", "subresource": "status",
                    "apiVersion": "v1", "time": "2026-12-06T22:04:07Z"}]},
            "spec": {"nodeName": "worker-1", "containers": [{"name": "app", "image": "nginx:1.27"}]},
            "status": status
        })
    };
    let stored = json!({
        "phase": "Running", "hostIP": "10.250.0.11", "podIP": "10.244.2.3", "podIPs": [{"ip": "10.244.2.3"}],
        "containerStatuses": [{"name": "app", "ready": true, "restartCount": 1, "image": "nginx:1.27",
            "containerID": "containerd://d5048065130f5c4f8e5bb0a1d1bd5b1cf0c6a3c5f0d1e8b9a7c6d5e4f3a2b1c0",
            "state": {"running": {"startedAt": "2026-12-06T22:04:07Z"}},
            "lastState": {"terminated": {"exitCode": 137, "reason": "Error",
                "containerID": "containerd://3930b8e85298a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6"}}}]
    });
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "subResource": "status",
            "name": "web-1", "namespace": "shop",
            "operation": "UPDATE",
            "userInfo": {"username": "system:node:worker-1", "groups": ["system:nodes", "system:authenticated"]},
            "object": pod(written),
            "oldObject": pod(stored),
            "dryRun": false
        }
    })
}

/// The copy's report of web-1: its own sandbox, its container naming the original's.
fn copys_status() -> Value {
    json!({
        "phase": "Running", "hostIP": "10.250.0.11", "podIP": "10.244.2.6", "podIPs": [{"ip": "10.244.2.6"}],
        "containerStatuses": [{"name": "app", "ready": true, "restartCount": 2, "image": "nginx:1.27",
            "containerID": "containerd://5151ae7fc38a0f9e8d7c6b5a49382716a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0",
            "state": {"running": {"startedAt": "2026-12-06T22:04:10Z"}},
            "lastState": {"terminated": {"exitCode": 255, "reason": "Unknown",
                "containerID": "containerd://d5048065130f5c4f8e5bb0a1d1bd5b1cf0c6a3c5f0d1e8b9a7c6d5e4f3a2b1c0"}}}]
    })
}

#[tokio::test]
async fn a_pod_status_write_is_judged_only_on_a_node_another_machine_writes_as() {
    with_hang_guard(async {
        // No second machine: the copy's report of the pod is not even read.
        let server = TestServer::ecdsa(cluster().inventory).await;
        let (status, answer) =
            review(&server.client(), "/validate/pods", &pod_status_review("uid-pod-1", copys_status())).await;
        assert_eq!((status, answer), (StatusCode::OK, allowed("uid-pod-1")));
        server.shutdown().await;

        let mut inventory = cluster().inventory;
        let mut record = nodeguard::inventory::LedgerEntry::named("worker-1");
        record.kept_boot_since = Some("2026-12-01T08:00:00Z".parse().unwrap());
        record.conflict = Some(Box::new(nodeguard::inventory::LedgerConflict {
            check: "two-kubelets".into(),
            kept_boot: "32b0070a-2222-4c2d-8e9f-0a1b2c3d4e32".into(),
            refused_boot: "42b0070a-4242-4c2d-8e9f-0a1b2c3d4e42".into(),
            detected: jiff::Timestamp::now(),
            message: "".into(),
        }));
        inventory.apply_identity(record);
        let server = TestServer::ecdsa(inventory).await;
        let (_, answer) =
            review(&server.client(), "/validate/pods", &pod_status_review("uid-pod-2", copys_status())).await;
        assert_eq!(
            answer,
            denied(
                "uid-pod-2",
                "nodeguard [two-kubelets]: another machine is writing as node \"worker-1\": its status of \
                 pod shop/web-1 is not the node's machine's (it moves the pod from 10.244.2.3 to \
                 10.244.2.6, another sandbox); stop this machine's kubelet and give it its own identity \
                 (hostname, rm /etc/machine-id && systemd-machine-id-setup, remove \
                 /var/lib/kubelet/pki/kubelet-client-* and /etc/kubernetes/kubelet.conf, re-join with a \
                 bootstrap token), then run nodeguard forget worker-1"
            )
        );
        // The original's own container restart, in the same sandbox, goes through.
        let mut restarted = pod_status_review("uid-pod-3", Value::Null)["request"]["oldObject"]["status"].clone();
        let app = &mut restarted["containerStatuses"][0];
        app["lastState"]["terminated"]["containerID"] = app["containerID"].clone();
        app["containerID"] = json!("containerd://0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9");
        app["restartCount"] = json!(2);
        let (_, answer) =
            review(&server.client(), "/validate/pods", &pod_status_review("uid-pod-3", restarted)).await;
        assert_eq!(answer, allowed("uid-pod-3"));
        // A review whose object is not a Pod is a 400, as on the other endpoints.
        let mut wrong = pod_status_review("uid-pod-4", copys_status());
        wrong["request"]["kind"]["kind"] = json!("Node");
        let (status, _) = text(&server.client(), "/validate/pods", serde_json::to_vec(&wrong).unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        server.shutdown().await;
    })
    .await;
}
