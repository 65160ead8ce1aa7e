//! The watch code, driven by the kube client over a mocked HTTP service: the test plays
//! the API server, answering the watchers' list and watch requests with real-format
//! Nodes and CSRs, and checks what reaches the inventory and readiness.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::channel::mpsc as chunks;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tower_test::mock;

use nodeguard::identity::{
    BootId, CsrClaim, Hostname, KeyFingerprint, MachineId, ProviderId, SystemUuid,
};
use nodeguard::inventory::{Holders, Inventory, SharedInventory};
use nodeguard::watch::observations::{self, Observation};
use nodeguard::watch::{self, Readiness};

/// Guards against hangs only; nothing here measures time.
const GUARD: Duration = Duration::from_secs(10);

const NODES_PATH: &str = "/api/v1/nodes";
const CSRS_PATH: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
const LEDGER_PATH: &str = "/apis/nodeguard.io/v1alpha1/nodeidentities";
const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

type TestBody = BoxBody<Bytes, io::Error>;
type Pending = mock::SendResponse<Response<TestBody>>;
type Call = (Request<kube::client::Body>, Pending);

// ---------------------------------------------------------------------------------
// A fake API server.

/// The watchers under test, and the requests they make, sorted by resource.
struct Cluster {
    inventory: SharedInventory,
    readiness: Readiness,
    nodes: mpsc::UnboundedReceiver<Call>,
    csrs: mpsc::UnboundedReceiver<Call>,
    ledger: mpsc::UnboundedReceiver<Call>,
    /// What the watchers pass to the ledger's recorder.
    observed: nodeguard::watch::observations::Observed,
    run: JoinHandle<anyhow::Result<()>>,
}

impl Cluster {
    fn start() -> Self {
        let (service, mut handle) = mock::pair::<Request<kube::client::Body>, Response<TestBody>>();
        let (nodes_tx, nodes) = mpsc::unbounded_channel();
        let (csrs_tx, csrs) = mpsc::unbounded_channel();
        let (ledger_tx, ledger) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let to = match request.uri().path() {
                    NODES_PATH => &nodes_tx,
                    CSRS_PATH => &csrs_tx,
                    LEDGER_PATH => &ledger_tx,
                    other => panic!("unexpected request for {other}"),
                };
                if to.send((request, send)).is_err() {
                    break;
                }
            }
        });
        let client = kube::Client::new(service, "default");
        let inventory = SharedInventory::new(Inventory::new());
        let readiness = Readiness::new();
        let (observations, observed) = observations::observations();
        let run = tokio::spawn(watch::run(
            client,
            inventory.clone(),
            readiness.clone(),
            Some(observations),
        ));
        Self {
            inventory,
            readiness,
            nodes,
            csrs,
            ledger,
            observed,
            run,
        }
    }

    async fn next_node_request(&mut self) -> Call {
        next(&mut self.nodes, "nodes").await
    }

    async fn next_csr_request(&mut self) -> Call {
        next(&mut self.csrs, "CSRs").await
    }

    /// Answers the initial Node list and the watch that follows it.
    async fn list_nodes(&mut self, resource_version: &str, items: Vec<Value>) -> WatchStream {
        let (request, send) = self.next_node_request().await;
        answer_list(&request, send, "NodeList", resource_version, items);
        let (request, send) = self.next_node_request().await;
        answer_watch(&request, send, resource_version)
    }

    /// Answers the initial CSR list and the watch that follows it.
    async fn list_csrs(&mut self, resource_version: &str, items: Vec<Value>) -> WatchStream {
        let (request, send) = self.next_csr_request().await;
        answer_list(
            &request,
            send,
            "CertificateSigningRequestList",
            resource_version,
            items,
        );
        let (request, send) = self.next_csr_request().await;
        answer_watch(&request, send, resource_version)
    }

    /// Answers the initial NodeIdentity list and the watch that follows it.
    async fn list_ledger(&mut self, resource_version: &str, items: Vec<Value>) -> WatchStream {
        let (request, send) = next(&mut self.ledger, "node identities").await;
        answer_list(&request, send, "NodeIdentityList", resource_version, items);
        let (request, send) = next(&mut self.ledger, "node identities").await;
        answer_watch(&request, send, resource_version)
    }

    /// The next observation the watchers passed to the recorder.
    async fn next_observation(&mut self) -> Observation {
        match tokio::time::timeout(GUARD, self.observed.recv()).await {
            Ok(Some(observation)) => observation,
            Ok(None) => panic!("the watchers dropped the recorder's channel"),
            Err(_) => panic!("no observation reached the recorder"),
        }
    }

    /// The next observation of a change, past any resync still pending from a list.
    async fn next_change(&mut self) -> Observation {
        loop {
            match self.next_observation().await {
                Observation::Resync => continue,
                change => return change,
            }
        }
    }

    fn read<T>(&self, f: impl FnOnce(&Inventory) -> T) -> T {
        self.inventory.read(f)
    }

    /// Waits until the inventory satisfies `condition`: the watchers apply events on
    /// their own task, so there is no reply to wait for.
    async fn until(&self, what: &str, condition: impl Fn(&Inventory) -> bool) {
        let waited = tokio::time::timeout(GUARD, async {
            while !self.inventory.read(&condition) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "the inventory never reached: {what}");
    }

    async fn ready(&self) {
        let waited = tokio::time::timeout(GUARD, self.readiness.wait()).await;
        assert!(waited.is_ok(), "readiness was never set");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.run.abort();
    }
}

async fn next(requests: &mut mpsc::UnboundedReceiver<Call>, what: &str) -> Call {
    match tokio::time::timeout(GUARD, requests.recv()).await {
        Ok(Some(call)) => call,
        Ok(None) => panic!("the client went away before requesting {what}"),
        Err(_) => panic!("no request for {what} arrived"),
    }
}

fn query(request: &Request<kube::client::Body>) -> Vec<(String, String)> {
    request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (pair.to_string(), String::new()),
        })
        .collect()
}

fn param(request: &Request<kube::client::Body>, key: &str) -> Option<String> {
    query(request)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

fn is_watch(request: &Request<kube::client::Body>) -> bool {
    param(request, "watch").as_deref() == Some("true")
}

fn full(body: Vec<u8>) -> TestBody {
    Full::new(Bytes::from(body))
        .map_err(|never| match never {})
        .boxed()
}

fn answer_list(
    request: &Request<kube::client::Body>,
    send: Pending,
    kind: &str,
    resource_version: &str,
    items: Vec<Value>,
) {
    assert_eq!(request.method(), http::Method::GET);
    assert!(!is_watch(request), "expected a list, got {}", request.uri());
    let list = json!({
        "apiVersion": match kind {
            "NodeList" => "v1",
            "NodeIdentityList" => "nodeguard.io/v1alpha1",
            _ => "certificates.k8s.io/v1",
        },
        "kind": kind,
        "metadata": { "resourceVersion": resource_version },
        "items": items,
    });
    send.send_response(Response::new(full(serde_json::to_vec(&list).unwrap())));
}

fn answer_status(send: Pending, code: u16, reason: &str, message: &str) {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    let response = Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header("content-type", "application/json")
        .body(full(serde_json::to_vec(&status).unwrap()))
        .unwrap();
    send.send_response(response);
}

/// Answers a watch request with a body that stays open until the returned stream is
/// dropped (or ended), as the API server's chunked watch responses do.
fn answer_watch(
    request: &Request<kube::client::Body>,
    send: Pending,
    resource_version: &str,
) -> WatchStream {
    assert_eq!(request.method(), http::Method::GET);
    assert!(is_watch(request), "expected a watch, got {}", request.uri());
    assert_eq!(
        param(request, "resourceVersion").as_deref(),
        Some(resource_version),
        "the watch must resume from the last resourceVersion seen: {}",
        request.uri()
    );
    let (tx, rx) = chunks::unbounded::<Result<Frame<Bytes>, io::Error>>();
    let response = Response::builder()
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(StreamBody::new(rx).boxed())
        .unwrap();
    send.send_response(response);
    WatchStream(tx)
}

/// The open body of one watch response.
struct WatchStream(chunks::UnboundedSender<Result<Frame<Bytes>, io::Error>>);

impl WatchStream {
    fn line(&self, line: Value) {
        let mut bytes = serde_json::to_vec(&line).unwrap();
        bytes.push(b'\n');
        // The watcher may already have moved on (e.g. after a 410); that is fine.
        let _ = self.0.unbounded_send(Ok(Frame::data(Bytes::from(bytes))));
    }

    fn event(&self, kind: &str, object: &Value) {
        self.line(json!({ "type": kind, "object": object }));
    }

    fn bookmark(&self, api_version: &str, kind: &str, resource_version: &str) {
        self.line(json!({
            "type": "BOOKMARK",
            "object": {
                "apiVersion": api_version,
                "kind": kind,
                "metadata": {
                    "resourceVersion": resource_version,
                    "creationTimestamp": null,
                },
            },
        }));
    }

    /// What the API server sends when the requested resourceVersion was compacted away.
    fn gone(&self) {
        self.line(json!({
            "type": "ERROR",
            "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure",
                "message": "too old resource version: 1000 (2500)",
                "reason": "Expired", "code": 410,
            },
        }));
    }

    /// The server closes the response, as it does when `timeoutSeconds` runs out.
    fn end(self) {}
}

// ---------------------------------------------------------------------------------
// Real-format objects.

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/real/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/real/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// The two nodes of a real EKS cluster, as listed (they carry resourceVersions).
fn eks_nodes() -> Vec<Value> {
    let mut list = fixture("nodelist-eks-al2023-2nodes.json");
    let items = list["items"].as_array_mut().unwrap();
    for item in items.iter_mut() {
        item["apiVersion"] = json!("v1");
        item["kind"] = json!("Node");
    }
    items.clone()
}

const EKS_A: &str = "ip-10-0-10-170.ec2.internal";
const EKS_A_MACHINE_ID: &str = "ec2b3bdec96c7af61cce2486f1b12379";
const EKS_B: &str = "ip-10-0-20-143.ec2.internal";
const EKS_B_MACHINE_ID: &str = "ec2a419456ea4423f3e3e290ee4f5aac";

/// A kubelet-shaped Node (images, conditions, nodeInfo, addresses) built from the kind
/// control-plane fixture, with its own identity.
fn kind_node(
    name: &str,
    resource_version: &str,
    machine_id: &str,
    system_uuid: &str,
    ip: &str,
) -> Value {
    let mut node = fixture("node-kind-control-plane.json");
    node["metadata"]["name"] = json!(name);
    node["metadata"]["resourceVersion"] = json!(resource_version);
    node["metadata"]["uid"] = json!(format!("uid-{name}"));
    node["metadata"]["labels"]["kubernetes.io/hostname"] = json!(name);
    node["spec"]["providerID"] = json!(format!("kind://docker/attack-chain-6/{name}"));
    node["status"]["nodeInfo"]["machineID"] = json!(machine_id);
    node["status"]["nodeInfo"]["systemUUID"] = json!(system_uuid);
    node["status"]["addresses"] = json!([
        { "address": ip, "type": "InternalIP" },
        { "address": name, "type": "Hostname" },
    ]);
    node
}

fn set_resource_version(object: &mut Value, resource_version: &str) {
    object["metadata"]["resourceVersion"] = json!(resource_version);
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn fingerprint(pem_file: &str) -> KeyFingerprint {
    CsrClaim::from_pem(&fixture_bytes(pem_file))
        .unwrap()
        .fingerprint
}

/// A kubelet bootstrap CSR as stored by the API server, still pending.
fn pending_csr(name: &str, resource_version: &str, pem_file: &str, signer: &str) -> Value {
    json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {
            "name": name,
            "resourceVersion": resource_version,
            "uid": format!("uid-{name}"),
            "creationTimestamp": "2024-03-04T09:40:00Z",
        },
        "spec": {
            "request": b64(&fixture_bytes(pem_file)),
            "signerName": signer,
            "expirationSeconds": 86400,
            "usages": ["digital signature", "client auth"],
            "username": "system:bootstrap:abcdef",
            "groups": ["system:bootstrappers", "system:bootstrappers:kubeadm:default-node-token", "system:authenticated"],
        },
        "status": {},
    })
}

/// Approves and issues the CSR as the cluster's approver and signer do: a certificate
/// for the request's own key and subject.
fn approve(csr: &mut Value, resource_version: &str) {
    let issued = nodeguard_testkit::kubelet::issued(csr.clone());
    set_resource_version(csr, resource_version);
    csr["status"] = issued["status"].clone();
    assert!(
        csr["status"]["certificate"].is_string(),
        "the fixture's request could not be signed"
    );
}

fn deny(csr: &mut Value, resource_version: &str) {
    set_resource_version(csr, resource_version);
    csr["status"] = json!({
        "conditions": [{
            "type": "Denied",
            "status": "True",
            "reason": "NotAllowed",
            "message": "a node with this name is already registered",
            "lastUpdateTime": "2024-03-04T09:40:01Z",
            "lastTransitionTime": "2024-03-04T09:40:01Z",
        }],
    });
}

// ---------------------------------------------------------------------------------
// Inventory probes.

fn names(holders: Holders<'_>) -> Vec<String> {
    holders
        .other_than("")
        .names
        .into_iter()
        .map(|n| n.to_string())
        .collect()
}

fn machine_id_holders(inv: &Inventory, value: &str) -> Vec<String> {
    names(inv.machine_id(&MachineId::parse(value).unwrap()))
}

fn key_holders(inv: &Inventory, key: &KeyFingerprint) -> Vec<String> {
    names(inv.key(key))
}

fn ip(value: &str) -> IpAddr {
    value.parse().unwrap()
}

// ---------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn readiness_waits_for_all_three_lists() {
    let mut cluster = Cluster::start();
    assert!(!cluster.readiness.is_ready());

    // The Node watch is only requested once the Node list has been applied.
    let _nodes = cluster.list_nodes("2568", eks_nodes()).await;
    assert_eq!(cluster.read(|inv| inv.size().nodes), 2);
    assert_eq!(
        cluster.read(|inv| machine_id_holders(inv, EKS_A_MACHINE_ID)),
        [EKS_A]
    );
    assert!(
        !cluster.readiness.is_ready(),
        "ready before the CSRs were listed"
    );

    let _csrs = cluster.list_csrs("2570", vec![]).await;
    assert_eq!(cluster.read(|inv| inv.size().nodes), 2);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !cluster.readiness.is_ready(),
        "ready before the ledger was listed"
    );
    let _ledger = cluster.list_ledger("2571", vec![]).await;
    cluster.ready().await;
    assert!(cluster.readiness.is_ready());
}

#[tokio::test]
async fn readiness_waits_for_a_list_that_failed_and_was_retried() {
    let mut cluster = Cluster::start();
    let _csrs = cluster.list_csrs("2570", vec![]).await;

    let (request, send) = cluster.next_node_request().await;
    assert!(!is_watch(&request));
    answer_status(send, 500, "InternalError", "etcdserver: request timed out");
    // The watcher backs off and lists again; until it succeeds, the inventory is not
    // known to be current.
    let (request, send) = cluster.next_node_request().await;
    assert!(!cluster.readiness.is_ready());
    answer_list(&request, send, "NodeList", "2568", eks_nodes());
    let _ledger = cluster.list_ledger("2571", vec![]).await;
    cluster.ready().await;
    assert_eq!(cluster.read(|inv| inv.size().nodes), 2);
}

#[tokio::test]
async fn listed_nodes_are_indexed_and_watch_events_keep_them_current() {
    let mut cluster = Cluster::start();
    let mut kind = kind_node(
        "kind-worker",
        "2500",
        "9cbf8e2fbf5540cd8ff218ef016ba690",
        "3f39a350-3cd4-400f-875d-c270379817b0",
        "172.18.0.3",
    );
    let mut items = eks_nodes();
    items.push(kind.clone());
    let nodes = cluster.list_nodes("2568", items).await;
    let _csrs = cluster.list_csrs("2570", vec![]).await;
    let _ledger = cluster.list_ledger("2571", vec![]).await;
    cluster.ready().await;

    cluster.read(|inv| {
        assert_eq!(inv.size().nodes, 3);
        assert_eq!(machine_id_holders(inv, EKS_A_MACHINE_ID), [EKS_A]);
        assert_eq!(machine_id_holders(inv, EKS_B_MACHINE_ID), [EKS_B]);
        assert_eq!(
            machine_id_holders(inv, "9cbf8e2fbf5540cd8ff218ef016ba690"),
            ["kind-worker"]
        );
        assert_eq!(names(inv.internal_ip(&ip("10.0.20.143"))), [EKS_B]);
        assert_eq!(
            names(
                inv.provider_id(
                    &ProviderId::parse("aws:///us-east-1a/i-08736224042c4ee75").unwrap()
                )
            ),
            [EKS_A]
        );
        assert_eq!(
            names(inv.hostname(&Hostname::parse(EKS_B).unwrap())),
            [EKS_B]
        );
    });

    // A bookmark only moves the resourceVersion on.
    nodes.bookmark("v1", "Node", "2600");

    // The kind node's machine was re-imaged: a new machine-id frees the old one.
    kind["status"]["nodeInfo"]["machineID"] = json!("0f7a9d3c1e2b4a5f8e6d7c8b9a0f1e2d");
    set_resource_version(&mut kind, "2601");
    nodes.event("MODIFIED", &kind);
    cluster
        .until("the new machine-id is held", |inv| {
            !inv.machine_id(&MachineId::parse("0f7a9d3c1e2b4a5f8e6d7c8b9a0f1e2d").unwrap())
                .is_empty()
        })
        .await;
    cluster.read(|inv| {
        assert!(
            inv.machine_id(&MachineId::parse("9cbf8e2fbf5540cd8ff218ef016ba690").unwrap())
                .is_empty()
        );
        assert_eq!(
            machine_id_holders(inv, "0f7a9d3c1e2b4a5f8e6d7c8b9a0f1e2d"),
            ["kind-worker"]
        );
        assert_eq!(inv.size().nodes, 3);
    });

    // A node joins.
    let joined = kind_node(
        "kind-worker2",
        "2602",
        "5d2e0c6b8a9f4e1d9c3b7a6f5e4d3c2b",
        "6a1f3b2c-4d5e-4f60-8a7b-9c0d1e2f3a4b",
        "172.18.0.4",
    );
    nodes.event("ADDED", &joined);
    cluster
        .until("the joined node is indexed", |inv| {
            inv.node("kind-worker2").is_some()
        })
        .await;
    assert_eq!(
        cluster.read(|inv| names(
            inv.system_uuid(&SystemUuid::parse("6a1f3b2c-4d5e-4f60-8a7b-9c0d1e2f3a4b").unwrap())
        )),
        ["kind-worker2"]
    );

    // A node is deleted: every value it held is free again.
    let mut gone = eks_nodes().remove(1);
    set_resource_version(&mut gone, "2603");
    nodes.event("DELETED", &gone);
    cluster
        .until("the deleted node is gone", |inv| inv.node(EKS_B).is_none())
        .await;
    cluster.read(|inv| {
        assert!(
            inv.machine_id(&MachineId::parse(EKS_B_MACHINE_ID).unwrap())
                .is_empty()
        );
        assert!(
            inv.system_uuid(&SystemUuid::parse("ec2a4194-56ea-4423-f3e3-e290ee4f5aac").unwrap())
                .is_empty()
        );
        assert!(inv.internal_ip(&ip("10.0.20.143")).is_empty());
        assert!(inv.hostname(&Hostname::parse(EKS_B).unwrap()).is_empty());
        assert!(
            inv.provider_id(&ProviderId::parse("aws:///us-east-1b/i-049093276ec4a5e07").unwrap())
                .is_empty()
        );
        assert_eq!(machine_id_holders(inv, EKS_A_MACHINE_ID), [EKS_A]);
        assert_eq!(inv.size().nodes, 3);
    });
    assert!(cluster.readiness.is_ready());
}

#[tokio::test]
async fn a_watch_that_ends_is_resumed_from_the_last_resource_version() {
    let mut cluster = Cluster::start();
    let nodes = cluster.list_nodes("2568", eks_nodes()).await;
    let _csrs = cluster.list_csrs("2570", vec![]).await;
    let _ledger = cluster.list_ledger("2571", vec![]).await;
    cluster.ready().await;

    let mut a = eks_nodes().remove(0);
    a["status"]["nodeInfo"]["bootID"] = json!("0b6c1c55-5f51-4d8e-9e0f-3a1b2c3d4e5f");
    set_resource_version(&mut a, "2700");
    nodes.event("MODIFIED", &a);
    nodes.bookmark("v1", "Node", "2750");
    nodes.end();

    // The watcher resumes where it stopped (the bookmark), without a re-list.
    let (request, send) = cluster.next_node_request().await;
    let nodes = answer_watch(&request, send, "2750");
    assert_eq!(
        cluster.read(|inv| inv.node(EKS_A).and_then(|n| n.boot_id.clone())),
        BootId::parse("0b6c1c55-5f51-4d8e-9e0f-3a1b2c3d4e5f")
    );

    let mut b = eks_nodes().remove(1);
    set_resource_version(&mut b, "2701");
    nodes.event("DELETED", &b);
    cluster
        .until("the node deleted on the resumed watch is gone", |inv| {
            inv.node(EKS_B).is_none()
        })
        .await;
    assert!(cluster.readiness.is_ready());
}

#[tokio::test]
async fn an_expired_watch_relists_and_forgets_nodes_deleted_meanwhile() {
    let mut cluster = Cluster::start();
    let kind = kind_node(
        "kind-worker",
        "2500",
        "9cbf8e2fbf5540cd8ff218ef016ba690",
        "3f39a350-3cd4-400f-875d-c270379817b0",
        "172.18.0.3",
    );
    let mut items = eks_nodes();
    items.push(kind.clone());
    let nodes = cluster.list_nodes("2568", items).await;
    let _csrs = cluster.list_csrs("2570", vec![]).await;
    let _ledger = cluster.list_ledger("2571", vec![]).await;
    cluster.ready().await;
    assert_eq!(cluster.read(|inv| inv.size().nodes), 3);

    // The resourceVersion was compacted while the watch was down: 410 Gone.
    nodes.gone();
    drop(nodes);

    // Meanwhile EKS_B was deleted; the new list no longer has it.
    let (request, send) = cluster.next_node_request().await;
    answer_list(
        &request,
        send,
        "NodeList",
        "3000",
        vec![eks_nodes().remove(0), kind],
    );
    let (request, send) = cluster.next_node_request().await;
    let _nodes = answer_watch(&request, send, "3000");

    cluster.read(|inv| {
        assert_eq!(inv.size().nodes, 2);
        assert!(inv.node(EKS_B).is_none());
        assert!(
            inv.machine_id(&MachineId::parse(EKS_B_MACHINE_ID).unwrap())
                .is_empty()
        );
        assert!(inv.internal_ip(&ip("10.0.20.143")).is_empty());
        assert_eq!(machine_id_holders(inv, EKS_A_MACHINE_ID), [EKS_A]);
        assert_eq!(
            machine_id_holders(inv, "9cbf8e2fbf5540cd8ff218ef016ba690"),
            ["kind-worker"]
        );
    });
    // A re-list does not make the inventory less current than it was.
    assert!(cluster.readiness.is_ready());
}

#[tokio::test]
async fn approved_kubelet_csrs_bind_their_key_and_others_do_not() {
    let gke_pem = "csr-kubelet-client-gke-castai.pem";
    let openshift_pem = "csr-kubelet-client-openshift-ostest-extraworker-3.pem";
    let ip_san_pem = "csr-kubelet-gke-castai-ip-san.pem";
    let gke_key = fingerprint(gke_pem);
    let openshift_key = fingerprint(openshift_pem);
    let ip_san_key = fingerprint(ip_san_pem);

    let mut approved = pending_csr("csr-7xk2p", "4100", gke_pem, CLIENT_SIGNER);
    approve(&mut approved, "4101");
    let mut pending = pending_csr("csr-9qv4d", "4102", openshift_pem, CLIENT_SIGNER);
    let mut denied = pending_csr("csr-m2zt8", "4103", ip_san_pem, CLIENT_SIGNER);
    deny(&mut denied, "4104");

    let mut cluster = Cluster::start();
    let _nodes = cluster.list_nodes("2568", eks_nodes()).await;
    let csrs = cluster
        .list_csrs(
            "4200",
            vec![approved.clone(), pending.clone(), denied.clone()],
        )
        .await;
    let _ledger = cluster.list_ledger("2571", vec![]).await;
    cluster.ready().await;

    cluster.read(|inv| {
        assert_eq!(key_holders(inv, &gke_key), ["gke-am-gcp-cast-5dc4f4ec"]);
        assert!(
            inv.key(&openshift_key).is_empty(),
            "a pending CSR binds nothing"
        );
        assert!(
            inv.key(&ip_san_key).is_empty(),
            "a denied CSR binds nothing"
        );
        assert_eq!(inv.size().key_bindings, 1);
    });

    // The pending request is approved and issued: its key is now that node's.
    approve(&mut pending, "4201");
    csrs.event("MODIFIED", &pending);
    cluster
        .until("the approved key is bound", |inv| {
            !inv.key(&openshift_key).is_empty()
        })
        .await;
    assert_eq!(
        cluster.read(|inv| key_holders(inv, &openshift_key)),
        ["ostest-extraworker-3"]
    );

    // A request that arrives pending and is then denied never binds.
    let mut late = pending_csr("csr-h8w3n", "4202", ip_san_pem, CLIENT_SIGNER);
    csrs.event("ADDED", &late);
    deny(&mut late, "4203");
    csrs.event("MODIFIED", &late);

    // Garbage collection deletes the issued CSR: its binding goes with it.
    set_resource_version(&mut approved, "4204");
    csrs.event("DELETED", &approved);
    cluster
        .until("the deleted CSR's key is free", |inv| {
            inv.key(&gke_key).is_empty()
        })
        .await;
    cluster.read(|inv| {
        assert!(inv.key(&ip_san_key).is_empty());
        assert_eq!(key_holders(inv, &openshift_key), ["ostest-extraworker-3"]);
        assert_eq!(inv.size().key_bindings, 1);
    });
}

#[tokio::test]
async fn csrs_deleted_while_the_watch_was_down_are_forgotten_on_relist() {
    let gke_pem = "csr-kubelet-client-gke-castai.pem";
    let openshift_pem = "csr-kubelet-client-openshift-ostest-extraworker-3.pem";
    let mut first = pending_csr("csr-7xk2p", "4100", gke_pem, CLIENT_SIGNER);
    approve(&mut first, "4101");
    let mut second = pending_csr("csr-9qv4d", "4102", openshift_pem, CLIENT_SIGNER);
    approve(&mut second, "4103");

    let mut cluster = Cluster::start();
    let _nodes = cluster.list_nodes("2568", eks_nodes()).await;
    let csrs = cluster
        .list_csrs("4200", vec![first.clone(), second.clone()])
        .await;
    let _ledger = cluster.list_ledger("2571", vec![]).await;
    cluster.ready().await;
    assert_eq!(cluster.read(|inv| inv.size().key_bindings), 2);

    csrs.gone();
    drop(csrs);
    let (request, send) = cluster.next_csr_request().await;
    answer_list(
        &request,
        send,
        "CertificateSigningRequestList",
        "5000",
        vec![second],
    );
    let (request, send) = cluster.next_csr_request().await;
    let _csrs = answer_watch(&request, send, "5000");

    cluster.read(|inv| {
        assert!(inv.key(&fingerprint(gke_pem)).is_empty());
        assert_eq!(
            key_holders(inv, &fingerprint(openshift_pem)),
            ["ostest-extraworker-3"]
        );
        assert_eq!(inv.size().key_bindings, 1);
    });
}

/// A NodeIdentity as the recorder writes it: a client key bound an hour ago, two boots.
fn node_identity(name: &str, resource_version: &str, key: &KeyFingerprint) -> Value {
    json!({
        "apiVersion": "nodeguard.io/v1alpha1",
        "kind": "NodeIdentity",
        "metadata": {
            "name": name,
            "resourceVersion": resource_version,
            "uid": format!("uid-nid-{name}"),
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": format!("uid-{name}")}],
        },
        "spec": {
            "machineID": EKS_A_MACHINE_ID,
            "keys": [{
                "fingerprint": key.to_string(),
                "signer": CLIENT_SIGNER,
                "firstSeen": "2024-03-04T09:40:01Z",
                "csr": "csr-gone1",
            }],
            "boots": [
                {"bootID": "3c9e1f20-5b7a-4d8e-a6f1-0b2c3d4e5f60", "firstSeen": "2024-03-01T08:00:00Z", "lastSeen": "2024-03-04T08:00:00Z"},
                {"bootID": "d8f2c1a0-1b2c-4d3e-8f4a-5b6c7d8e9f00", "firstSeen": "2024-03-04T09:00:00Z", "lastSeen": "2024-03-04T09:00:00Z"},
            ],
        },
        "status": {"currentBoot": "d8f2c1a0-1b2c-4d3e-8f4a-5b6c7d8e9f00", "boots": 2, "keys": 1},
    })
}

#[tokio::test]
async fn the_ledger_binds_keys_whose_csrs_are_gone_and_the_recorder_hears_of_changes() {
    let mut cluster = Cluster::start();
    let nodes = cluster.list_nodes("2568", eks_nodes()).await;
    let _csrs = cluster.list_csrs("2570", vec![]).await;
    let key = fingerprint("csr-kubelet-client-gke-castai.pem");
    let ledger = cluster
        .list_ledger("2571", vec![node_identity(EKS_A, "2569", &key)])
        .await;
    cluster.ready().await;

    // No CSR is stored, yet the key is bound: the ledger remembers it.
    assert_eq!(cluster.read(|inv| key_holders(inv, &key)), [EKS_A]);
    assert_eq!(cluster.read(|inv| inv.size().ledger_records), 1);

    // The lists of Nodes and CSRs each ask the recorder for a full comparison (asked
    // twice before it looks, it makes one).
    assert_eq!(cluster.next_observation().await, Observation::Resync);

    // A reboot of EKS_B reaches the recorder with its new boot id.
    let mut rebooted = eks_nodes()[1].clone();
    rebooted["status"]["nodeInfo"]["bootID"] = json!("0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0");
    set_resource_version(&mut rebooted, "2580");
    nodes.event("MODIFIED", &rebooted);
    match cluster.next_change().await {
        Observation::Node(node, evidence) => {
            assert_eq!(evidence, nodeguard::ledger::Evidence::Watch);
            assert_eq!(node.resource_version.as_deref(), Some("2580"));
            assert_eq!(node.name, EKS_B);
            assert_eq!(
                node.boot_id.as_deref(),
                Some("0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0")
            );
        }
        other => panic!("expected the rebooted node, got {other:?}"),
    }
    // The same Node again (a heartbeat) changes nothing the ledger keeps: no observation.
    set_resource_version(&mut rebooted, "2581");
    nodes.event("MODIFIED", &rebooted);

    // The record deleted (its Node was, or an admin released the name): the key is free.
    ledger.event("DELETED", &node_identity(EKS_A, "2590", &key));
    cluster
        .until("the deleted record's key is unbound", |inv| {
            inv.key(&key).is_empty()
        })
        .await;
    assert!(
        cluster.observed.is_empty(),
        "a heartbeat reached the recorder"
    );
}
