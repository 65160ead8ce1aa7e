//! The soak: `nodeguard serve` as a process (the release build), against the fake API
//! server over TCP holding a cluster of N nodes, each with its issued client CSR and its
//! NodeIdentity as the recorder writes them, under a steady rate of mixed admission
//! reviews sent as the API server sends them (HTTP/1.1 keep-alive connections over TLS).
//! On the way: the serving certificate is rotated, every watch is ended and the Nodes'
//! next watch answered 410 Gone (a full relist of the Nodes), and another replica takes
//! the Lease for 30 s, then lets it expire.
//!
//! Every answer is compared with the answer the same review got before the run began
//! (an admission of a healthy node stays allowed, a clone stays denied); an answer that
//! differs, a non-200, a wrong uid or a broken connection is a failed request. The one
//! accepted difference is the unchecked answer a replica gives while its view is not
//! current; those are counted. Prints the figures and exits 1 on any failed request.
//! Not run in CI.
//!
//!     scripts/soak                                   # 5,000 nodes, 500 reviews/s, 10 min
//!     scripts/soak --nodes 50000 --seconds 120 --no-faults   # memory at 50,000 nodes

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use nodeguard_testkit::fake_api;
use nodeguard_testkit::tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use fake_api::FakeApi;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use nodeguard::identity::{CsrDoc, KeyBinding, NodeClaim, NodeDoc};
use nodeguard::ledger::{Evidence, KeyObservation, NodeIdentity, NodeObservation};
use nodeguard::plumbing::dev_pki::{DEV_DNS_NAMES, DEV_SERVER_NAME, write_dev_pki};
use nodeguard_testkit::kubelet::{self, Machine, Requester, Write};
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const NODES: &str = "/api/v1/nodes";
const CSRS: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
const LEDGER: &str = "/apis/nodeguard.io/v1alpha1/nodeidentities";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/nodeguard/leases/nodeguard-recorder";
const IDENTITY: &str = "soak-replica";
const STANDBY: &str = "soak-standby";
/// How long the API server keeps one connection before a new one (as after a restart of
/// an API server or a rotation of its webhook client): new connections see a rotated
/// certificate.
const RECONNECT_EVERY: Duration = Duration::from_secs(20);

#[derive(Parser, Debug)]
struct Args {
    /// Nodes in the cluster, each with an issued client CSR and a NodeIdentity.
    #[arg(long, default_value_t = 5_000)]
    nodes: u32,
    /// Admission reviews per second, over all connections.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// How long the load runs.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Connections the reviews are spread over.
    #[arg(long, default_value_t = 8)]
    connections: u32,
    /// Kubelet status writes per second to the fake API server (watch events), going
    /// round the nodes; at least nodes / 300, so that every node writes its status every
    /// 5 minutes as a kubelet does. Default: that, and at least 20.
    #[arg(long)]
    churn: Option<u32>,
    /// No certificate rotation, watch restart or Lease handover.
    #[arg(long)]
    no_faults: bool,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Sets the Ready condition's heartbeat, as a kubelet's status write does: a node whose
/// heartbeat is older than nodeguard's heartbeat timeout (10 min) is treated as gone,
/// and its values as free to take over.
fn beat(node: &mut Value, at: &str) {
    if let Some(conditions) = node["status"]["conditions"].as_array_mut() {
        for condition in conditions {
            if condition["type"] == "Ready" {
                condition["lastHeartbeatTime"] = json!(at);
            }
        }
    }
}

fn claim(node: &Value) -> NodeClaim {
    let text = node.to_string();
    let doc: NodeDoc<'_> = serde_json::from_str(&text).unwrap();
    NodeClaim::from_doc(&doc).unwrap()
}

fn binding(csr: &Value) -> Option<KeyBinding> {
    let text = csr.to_string();
    let doc: CsrDoc<'_> = serde_json::from_str(&text).unwrap();
    KeyBinding::from_doc(&doc)
}

/// The cluster: Nodes as kubelets register them, their issued client CSRs, and the
/// NodeIdentity the recorder would have written for each. Returns the stored Nodes.
fn seed(api: &FakeApi, nodes: u32) -> Vec<Value> {
    let now = jiff::Timestamp::now();
    let mut stored = Vec::with_capacity(nodes as usize);
    for i in 0..nodes {
        let m = Machine::numbered(i);
        let mut node = kubelet::node_object(&m);
        node["metadata"]["uid"] = json!(format!("6f0c1b6e-1d2a-4c3b-9e8f-{i:012x}"));
        let node = api.insert(NODES, node);
        let key = kubelet::kubelet_key().unwrap();
        let pem = kubelet::csr_pem(&key, &m.name, &[], &[]).unwrap();
        let csr_name = format!("csr-{i:06}");
        let requester = Requester::Node {
            name: m.name.clone(),
        };
        let csr = kubelet::issued(kubelet::csr_object(
            &csr_name,
            kubelet::CLIENT_SIGNER,
            &pem,
            &requester,
        ));
        let csr = api.insert(CSRS, csr);
        let mut record = NodeIdentity::blank(&m.name);
        record.observe_node(
            &NodeObservation::of(&claim(&node)),
            now,
            Evidence::Confirmed,
        );
        if let Some(binding) = binding(&csr) {
            record.observe_key(
                &KeyObservation {
                    csr: csr_name,
                    binding,
                },
                now,
            );
        }
        api.insert(LEDGER, serde_json::to_value(&record).unwrap());
        stored.push(node);
    }
    stored
}

/// One review of the mix, and where it goes.
struct Review {
    kind: &'static str,
    path: &'static str,
    uid: String,
    body: Bytes,
}

/// The mix: of every 100 reviews, 70 status writes of registered nodes, 10 kubelet
/// restarts (CREATE of a registered node), 5 new machines joining, 5 clones of
/// registered machines joining under a new name, 8 certificate renewals by a node, 2
/// bootstrap CSRs for a name another machine holds.
fn reviews(nodes: &[Value]) -> Vec<Review> {
    let count = nodes.len() as u32;
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let pick = |n: u32| &nodes[((n.wrapping_mul(2_654_435_761)) % count) as usize];
    let mut all = Vec::new();
    let mut add = |kind: &'static str, path: &'static str, review: Value| {
        let uid = review["request"]["uid"].as_str().unwrap().to_string();
        all.push(Review {
            kind,
            path,
            uid,
            body: Bytes::from(review.to_string()),
        });
    };
    for n in 0..100u32 {
        let uid = |k: u32| format!("7c1e5f0a-0000-4000-8000-{:06x}{:06x}", n, k);
        for k in 0..70 {
            let old = pick(n * 100 + k);
            let mut new = old.clone();
            beat(&mut new, &now);
            let user = format!("system:node:{}", old["metadata"]["name"].as_str().unwrap());
            add(
                "status",
                "/validate/nodes",
                kubelet::node_review(&uid(k), Write::StatusPatch, &new, Some(old), &user),
            );
        }
        for k in 70..80 {
            let node = pick(n * 100 + k);
            let user = format!("system:node:{}", node["metadata"]["name"].as_str().unwrap());
            let mut create = node.clone();
            create["metadata"] = json!({
                "name": node["metadata"]["name"],
                "labels": node["metadata"]["labels"],
            });
            add(
                "restart",
                "/validate/nodes",
                kubelet::node_review(&uid(k), Write::Create, &create, None, &user),
            );
        }
        for k in 80..85 {
            let m = Machine::numbered(count + n * 5 + (k - 80));
            let user = format!("system:node:{}", m.name);
            add(
                "join",
                "/validate/nodes",
                kubelet::node_review(
                    &uid(k),
                    Write::Create,
                    &kubelet::node_object(&m),
                    None,
                    &user,
                ),
            );
        }
        for k in 85..90 {
            let mut copy = Machine::numbered((n * 100 + k) % count);
            copy.name = format!("clone-{n:03}-{k}");
            let user = format!("system:node:{}", copy.name);
            add(
                "clone",
                "/validate/nodes",
                kubelet::node_review(
                    &uid(k),
                    Write::Create,
                    &kubelet::node_object(&copy),
                    None,
                    &user,
                ),
            );
        }
        for k in 90..100 {
            let node = pick(n * 100 + k);
            let name = node["metadata"]["name"].as_str().unwrap().to_string();
            let key = kubelet::kubelet_key().unwrap();
            let pem = kubelet::csr_pem(&key, &name, &[], &[]).unwrap();
            let (kind, requester) = if k < 98 {
                ("renewal", Requester::Node { name: name.clone() })
            } else {
                (
                    "takeover",
                    Requester::Bootstrap {
                        token_id: "abcdef".into(),
                    },
                )
            };
            let csr = kubelet::csr_object(
                &format!("csr-soak-{n}-{k}"),
                kubelet::CLIENT_SIGNER,
                &pem,
                &requester,
            );
            add(kind, "/validate/csrs", kubelet::csr_review(&uid(k), &csr));
        }
    }
    all
}

/// What an answer says, as compared between runs of one review.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    allowed: bool,
    message: Option<String>,
}

const UNCHECKED: &str = "nodeguard: not checked";

/// Reads an AdmissionReview response: `Err` when it is not one for `uid`.
fn answer(body: &[u8], uid: &str) -> Result<(Answer, bool), String> {
    let review: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let response = &review["response"];
    if response["uid"] != uid {
        return Err(format!("uid {} for {uid}", response["uid"]));
    }
    let allowed = response["allowed"]
        .as_bool()
        .ok_or_else(|| "no response.allowed".to_string())?;
    let unchecked = response["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|w| w.as_str().is_some_and(|w| w.starts_with(UNCHECKED)));
    Ok((
        Answer {
            allowed,
            message: response["status"]["message"].as_str().map(str::to_string),
        },
        unchecked,
    ))
}

struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    opened: Instant,
}

async fn connect(webhook: SocketAddr, ca: &Path) -> Result<Connection, String> {
    let ca_pem = std::fs::read(ca).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(webhook)
        .await
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from(DEV_SERVER_NAME).unwrap();
    let tls = tls::connector(&ca_pem)
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (sender, connection) = http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(Connection {
        sender,
        opened: Instant::now(),
    })
}

async fn post(connection: &mut Connection, review: &Review) -> Result<(StatusCode, Bytes), String> {
    connection
        .sender
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let request = Request::post(review.path)
        .header(header::HOST, DEV_SERVER_NAME)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(review.body.clone()))
        .unwrap();
    let response = connection
        .sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    sent: u64,
    unchecked: u64,
    failures: Vec<String>,
    by_kind: HashMap<&'static str, u64>,
}

/// One connection's share of the load, open loop: a review is due every `every`, and
/// its latency counts from when it was due, so a stall shows in the figures.
async fn load(
    webhook: SocketAddr,
    ca: PathBuf,
    reviews: Arc<Vec<Review>>,
    baseline: Arc<Vec<Answer>>,
    offset: usize,
    every: Duration,
    until: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut connection: Option<Connection> = None;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut next = offset;
    loop {
        let due = ticks.tick().await.into_std();
        if due >= until {
            break;
        }
        let index = next % reviews.len();
        next += 7;
        let review = &reviews[index];
        if connection
            .as_ref()
            .is_none_or(|c| c.opened.elapsed() >= RECONNECT_EVERY)
        {
            connection = match connect(webhook, &ca).await {
                Ok(c) => Some(c),
                Err(error) => {
                    tally.failures.push(format!("connect: {error}"));
                    tally.sent += 1;
                    continue;
                }
            };
        }
        let Some(open) = connection.as_mut() else {
            continue;
        };
        tally.sent += 1;
        *tally.by_kind.entry(review.kind).or_default() += 1;
        let result = post(open, review).await;
        let latency = due.elapsed();
        tally
            .latencies_us
            .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        match result {
            Ok((StatusCode::OK, body)) => match answer(&body, &review.uid) {
                Ok((got, unchecked)) if unchecked && got.allowed => tally.unchecked += 1,
                Ok((got, _)) if got == baseline[index] => {}
                Ok((got, _)) => tally.failures.push(format!(
                    "{} review {index}: {got:?}, before the run {:?}",
                    review.kind, baseline[index]
                )),
                Err(error) => tally
                    .failures
                    .push(format!("{} review: {error}", review.kind)),
            },
            Ok((status, body)) => {
                tally.failures.push(format!(
                    "{} review: HTTP {status}: {}",
                    review.kind,
                    String::from_utf8_lossy(&body)
                ));
            }
            Err(error) => {
                tally
                    .failures
                    .push(format!("{} review: {error}", review.kind));
                connection = None;
            }
        }
    }
    tally
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn admin_get(admin: SocketAddr, path: &str) -> Option<(StatusCode, String)> {
    let tcp = TcpStream::connect(admin).await.ok()?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(tcp)).await.ok()?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(header::HOST, admin.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.ok()?;
    let status = response.status();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Every series of the metric `name`, as exported.
fn series<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .collect()
}

/// The time nodeguard itself measured (`nodeguard_admission_duration_seconds`, from a
/// complete body to the response, both webhooks): the bucket bound under which the
/// quantile `q` of requests fell, in ms.
fn server_quantile(text: &str, q: f64) -> Option<f64> {
    let mut buckets: std::collections::BTreeMap<u64, f64> = std::collections::BTreeMap::new();
    for line in series(text, "nodeguard_admission_duration_seconds_bucket") {
        let le = line.split("le=\"").nth(1)?.split('"').next()?;
        let count: f64 = line.rsplit(' ').next()?.parse().ok()?;
        let bound = if le == "+Inf" {
            u64::MAX
        } else {
            (le.parse::<f64>().ok()? * 1e6) as u64
        };
        *buckets.entry(bound).or_default() += count;
    }
    let total = *buckets.get(&u64::MAX)?;
    buckets
        .iter()
        .find(|(_, count)| **count >= q * total)
        .map(|(bound, _)| *bound as f64 / 1000.0)
}

async fn leading(admin: SocketAddr) -> String {
    let text = admin_get(admin, "/metrics")
        .await
        .map(|(_, t)| t)
        .unwrap_or_default();
    series(&text, "nodeguard_recorder_leading").join(", ")
}

fn lease_holder(api: &FakeApi) -> Option<String> {
    api.get(LEASE)?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
}

/// Kubelets writing their status: each write a new resourceVersion and a watch event.
async fn churn(api: Arc<FakeApi>, nodes: Vec<Value>, per_second: u32, stop: Arc<AtomicBool>) {
    if per_second == 0 {
        return;
    }
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / per_second);
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let name = nodes[n % nodes.len()]["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        n += 1;
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        api.update(&format!("{NODES}/{name}"), |node| beat(node, &now));
    }
}

/// Another replica holding the Lease for `hold`, renewing it, then stopping.
async fn standby_takes_the_lease(api: Arc<FakeApi>, hold: Duration) {
    let started = Instant::now();
    while started.elapsed() < hold {
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        api.update(LEASE, |lease| {
            let taking = lease["spec"]["holderIdentity"] != STANDBY;
            lease["spec"]["holderIdentity"] = json!(STANDBY);
            lease["spec"]["renewTime"] = json!(now);
            if taking {
                lease["spec"]["acquireTime"] = json!(now);
                let transitions = lease["spec"]["leaseTransitions"].as_u64().unwrap_or(0);
                lease["spec"]["leaseTransitions"] = json!(transitions + 1);
            }
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[at]) / 1000.0
}

struct Replica {
    process: Child,
    webhook: SocketAddr,
    admin: SocketAddr,
    dir: PathBuf,
}

async fn start(dir: &Path, api_addr: SocketAddr) -> Replica {
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
        .env("RUST_LOG", "info")
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    Replica {
        process,
        webhook,
        admin,
        dir: dir.to_path_buf(),
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("nodeguard-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write_dev_pki(&dir, &DEV_DNS_NAMES).unwrap();

    let seeding = Instant::now();
    // The fake API server and the kubelets' status writes run on a runtime of their
    // own, so that its work (a page of a 50,000-node list is built under its lock) never
    // delays the load generator's clock.
    let cluster_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let api = Arc::new(FakeApi::new());
    api.bookmark_every(Duration::from_secs(60));
    let nodes = seed(&api, args.nodes);
    let api_addr = {
        let api = Arc::clone(&api);
        cluster_runtime
            .spawn(async move { api.serve_http().await })
            .await
            .unwrap()
    };
    println!(
        "cluster: {} nodes, {} issued CSRs, {} NodeIdentities, seeded in {:.1} s",
        args.nodes,
        api.objects(CSRS).len(),
        api.objects(LEDGER).len(),
        seeding.elapsed().as_secs_f64()
    );

    let starting = Instant::now();
    let mut replica = start(&dir, api_addr).await;
    let pid = replica.process.id().unwrap();
    loop {
        if let Some((StatusCode::OK, _)) = admin_get(replica.admin, "/readyz").await {
            break;
        }
        if let Ok(Some(status)) = replica.process.try_wait() {
            panic!(
                "nodeguard serve exited: {status}; see {}",
                replica.dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_after = starting.elapsed();
    // The recorder's first resync compares every node with its record.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (rss_ready, _) = rss_kib(pid);
    println!(
        "nodeguard serve ready after {:.1} s; RSS {:.1} MiB",
        ready_after.as_secs_f64(),
        mib(rss_ready)
    );

    let reviews = Arc::new(reviews(&nodes));
    let ca = dir.join("ca.crt");
    // Each review's answer before the run: what every later answer must equal.
    let mut first = connect(replica.webhook, &ca).await.unwrap();
    let mut baseline = Vec::with_capacity(reviews.len());
    for review in reviews.iter() {
        let (status, body) = post(&mut first, review).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let (answer, unchecked) = answer(&body, &review.uid).unwrap();
        assert!(!unchecked, "not current before the run");
        baseline.push(answer);
    }
    drop(first);
    let mut expected: HashMap<&str, (u64, u64)> = HashMap::new();
    for (review, answer) in reviews.iter().zip(&baseline) {
        let counts = expected.entry(review.kind).or_default();
        if answer.allowed {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
    }
    let mut kinds: Vec<_> = expected.iter().collect();
    kinds.sort();
    println!("the mix before the run (allowed, denied): {kinds:?}");
    for (kind, should_allow) in [
        ("status", true),
        ("restart", true),
        ("join", true),
        ("renewal", true),
        ("clone", false),
        ("takeover", false),
    ] {
        let (allowed, denied) = expected.get(kind).copied().unwrap_or_default();
        let right = if should_allow {
            denied == 0
        } else {
            allowed == 0
        };
        assert!(
            right,
            "{kind}: {allowed} allowed, {denied} denied before the run"
        );
    }
    let baseline = Arc::new(baseline);

    let stop = Arc::new(AtomicBool::new(false));
    let churning = cluster_runtime.spawn(churn(
        Arc::clone(&api),
        nodes.clone(),
        args.churn.unwrap_or((args.nodes / 300 + 1).max(20)),
        Arc::clone(&stop),
    ));
    let run = Duration::from_secs(args.seconds);
    let started = Instant::now();
    let until = started + run;
    let every = Duration::from_secs(1) * args.connections / args.rate.max(1);
    let workers: Vec<_> = (0..args.connections)
        .map(|c| {
            tokio::spawn(load(
                replica.webhook,
                ca.clone(),
                Arc::clone(&reviews),
                Arc::clone(&baseline),
                c as usize * 101,
                every,
                until,
            ))
        })
        .collect();

    // RSS every 10 s, and the faults at a quarter, half and three quarters of the run.
    let samples = Arc::new(Mutex::new(Vec::<(f64, u64)>::new()));
    let sampling = {
        let samples = Arc::clone(&samples);
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (rss, _) = rss_kib(pid);
                samples
                    .lock()
                    .unwrap()
                    .push((started.elapsed().as_secs_f64(), rss));
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        })
    };
    let lease_lost_at = Arc::new(AtomicU64::new(0));
    let mut events = Vec::new();
    if !args.no_faults {
        tokio::time::sleep_until((started + run / 4).into()).await;
        write_dev_pki(&dir, &DEV_DNS_NAMES).unwrap();
        events.push(format!(
            "{:>5.0} s  serving certificate rotated (new CA and pair)",
            started.elapsed().as_secs_f64()
        ));
        tokio::time::sleep_until((started + run / 2).into()).await;
        // As after an API server restart: every watch ends, and the Nodes' watch cannot
        // resume (its resourceVersion too old: 410 Expired), so all Nodes are listed again.
        api.expire_next_watch(NODES);
        api.end_watches();
        events.push(format!(
            "{:>5.0} s  every watch ended by the API server; the Nodes' next watch answered 410, a full relist",
            started.elapsed().as_secs_f64()
        ));
        tokio::time::sleep_until((started + run * 3 / 4).into()).await;
        events.push(format!(
            "{:>5.0} s  Lease taken by {STANDBY} (held 30 s, then left to expire); holder was {:?}",
            started.elapsed().as_secs_f64(),
            lease_holder(&api)
        ));
        let holding = tokio::spawn(standby_takes_the_lease(
            Arc::clone(&api),
            Duration::from_secs(30),
        ));
        tokio::time::sleep(Duration::from_secs(20)).await;
        events.push(format!(
            "{:>5.0} s  while {STANDBY} holds it: {}",
            started.elapsed().as_secs_f64(),
            leading(replica.admin).await
        ));
        let _ = holding.await;
        lease_lost_at.store(started.elapsed().as_secs(), Ordering::Relaxed);
        let released = Instant::now();
        while lease_holder(&api).as_deref() != Some(IDENTITY)
            && released.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        events.push(format!(
            "{:>5.0} s  Lease back with {:?}, {:.1} s after {STANDBY} stopped renewing; {}",
            started.elapsed().as_secs_f64(),
            lease_holder(&api),
            released.elapsed().as_secs_f64(),
            leading(replica.admin).await
        ));
    }

    let mut tally = Tally::default();
    for worker in workers {
        let part = worker.await.unwrap();
        tally.latencies_us.extend(part.latencies_us);
        tally.sent += part.sent;
        tally.unchecked += part.unchecked;
        tally.failures.extend(part.failures);
        for (kind, n) in part.by_kind {
            *tally.by_kind.entry(kind).or_default() += n;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = churning.await;
    let _ = sampling.await;
    let (rss_end, hwm) = rss_kib(pid);
    let metrics = admin_get(replica.admin, "/metrics")
        .await
        .map(|(_, text)| text)
        .unwrap_or_default();
    let exited = replica.process.try_wait().ok().flatten();
    let _ = replica.process.kill().await;
    cluster_runtime.shutdown_background();

    tally.latencies_us.sort_unstable();
    let samples = samples.lock().unwrap().clone();
    let rss_start = samples.first().map_or(rss_ready, |s| s.1);
    println!();
    println!(
        "load: {} reviews in {:.0} s ({:.0}/s) over {} connections, reconnecting every {} s",
        tally.sent,
        run.as_secs_f64(),
        tally.sent as f64 / run.as_secs_f64(),
        args.connections,
        RECONNECT_EVERY.as_secs()
    );
    let mut kinds: Vec<_> = tally.by_kind.iter().collect();
    kinds.sort();
    println!("  by kind: {kinds:?}");
    println!(
        "  latency (from when due): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        percentile(&tally.latencies_us, 0.50),
        percentile(&tally.latencies_us, 0.99),
        percentile(&tally.latencies_us, 0.999),
        percentile(&tally.latencies_us, 1.0)
    );
    println!(
        "  as nodeguard measured it (its duration histogram): p50 ≤ {:.2} ms, p99 ≤ {:.2} ms",
        server_quantile(&metrics, 0.50).unwrap_or(f64::NAN),
        server_quantile(&metrics, 0.99).unwrap_or(f64::NAN)
    );
    println!(
        "  failed: {}; unchecked (view not current): {}",
        tally.failures.len(),
        tally.unchecked
    );
    for failure in tally.failures.iter().take(10) {
        println!("    {failure}");
    }
    for event in &events {
        println!("  {event}");
    }
    let responses = api.responses();
    let node_lists = responses
        .iter()
        .filter(|(method, target, status)| {
            method == http::Method::GET
                && target.starts_with(&format!("{NODES}?"))
                && !target.contains("watch=true")
                && !target.contains("continue=")
                && *status == StatusCode::OK
        })
        .count();
    println!("  full lists of the Nodes served: {node_lists} (the first, and one per relist)");
    println!(
        "RSS: {:.1} MiB at the start of the load, {:.1} MiB at the end ({:+.1}%), peak {:.1} MiB",
        mib(rss_start),
        mib(rss_end),
        (rss_end as f64 / rss_start as f64 - 1.0) * 100.0,
        mib(hwm)
    );
    let every_10s: Vec<String> = samples
        .iter()
        .map(|(at, rss)| format!("{at:.0}s:{:.0}", mib(*rss)))
        .collect();
    println!("  every 10 s (MiB): {}", every_10s.join(" "));
    for name in [
        "nodeguard_inventory_nodes",
        "nodeguard_inventory_key_bindings",
        "nodeguard_ledger_records",
        "nodeguard_ledger_writes_total",
        "nodeguard_recorder_leading",
        "nodeguard_serving_certificate_reloads_total",
        "nodeguard_task_restarts_total",
        "nodeguard_inventory_view_errors",
    ] {
        for line in series(&metrics, name) {
            println!("  {line}");
        }
    }
    if let Some(status) = exited {
        println!("nodeguard serve exited during the run: {status}");
    }
    if tally.failures.is_empty() && exited.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("log and files kept in {}", dir.display());
        std::process::exit(1);
    }
}
