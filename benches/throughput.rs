//! Prints nodeguard's throughput and latency next to a bare server on the same stack
//! (`serve_tls`, the same rustls configuration, axum) that answers every review with a
//! fixed "allowed", for the design's speed budget: ≥ 0.8× the bare server's throughput,
//! and p99 ≤ 2 ms at 1,000 req/s on 2 cores. Figures only: nothing here passes or fails.
//!
//!     cargo bench --bench throughput
//!
//! Both servers run on one tokio runtime of 2 worker threads; the load comes from
//! `AdmissionClient`s (HTTPS, HTTP/1.1 keep-alive, verified as `nodeguard.nodeguard.svc`)
//! on a second runtime. Each request is a kubelet's Node CREATE for a node not in the
//! inventory of 5,000 nodes, so every node check runs. On a machine with few cores the
//! clients take CPU from the servers, which understates the cost nodeguard adds; so the
//! CPU the server threads use per request is printed as well, measured from
//! `/proc/self/task`, and is the figure to compare when the clients share the cores.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::routing::post;
use http::StatusCode;
use http::header::CONTENT_TYPE;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

use nodeguard::cmd::demo::SERVICE_DNS_NAME;
use nodeguard::cmd::demo::scenarios::inventory_of;
use nodeguard::inventory::SharedInventory;
use nodeguard::metrics::Metrics;
use nodeguard::plumbing::dev_pki::generate_dev_pki;
use nodeguard::plumbing::https::serve_tls;
use nodeguard::webhook::client::AdmissionClient;
use nodeguard::webhook::{AppState, MAX_BODY_BYTES, router};
use nodeguard_testkit::kubelet::{self, Machine, Write};

const PATH: &str = "/validate/nodes";
const INVENTORY_NODES: u32 = 5_000;
/// The servers' runtime: the "2 cores" of the budget.
const SERVER_THREADS: usize = 2;
const CLIENT_THREADS: usize = 2;
/// Kept-alive HTTPS connections per server, each carrying one request at a time.
const CONNECTIONS: usize = 8;
const WARMUP_REQUESTS_PER_CONNECTION: usize = 50;
/// Closed loop: this many requests per run, or this long, whichever comes first.
const THROUGHPUT_REQUESTS: usize = 100_000;
const THROUGHPUT_TIME_CAP: Duration = Duration::from_secs(4);
/// Closed-loop runs per server, alternating between the two; the median is kept.
const ROUNDS: usize = 3;
/// Open loop: requests sent at this fixed rate, whether or not earlier ones answered.
const RATE_PER_SECOND: u64 = 1_000;
const RATE_DURATION: Duration = Duration::from_secs(5);
const SERVER_THREAD_NAME: &str = "bench-server";
const CLIENT_THREAD_NAME: &str = "bench-client";

/// Nanoseconds of CPU used so far by this process's threads whose name starts with
/// `prefix` (tokio names every thread of a runtime alike).
fn thread_cpu_ns(prefix: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let mut total = 0;
    for task in tasks.flatten() {
        let dir = task.path();
        let named = std::fs::read_to_string(dir.join("comm"))
            .is_ok_and(|comm| comm.trim_end().starts_with(prefix));
        if !named {
            continue;
        }
        // schedstat: time on CPU (ns), time waiting to run (ns), timeslices.
        total += std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// Sum (seconds) and count of nodeguard's own handler-time histogram for nodes: from a
/// complete request body to the response, i.e. decode, checks and answer.
fn handler_time(metrics: &Metrics) -> (f64, u64) {
    let text = metrics.encode().unwrap_or_default();
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains("webhook=\"nodes\""))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("nodeguard_admission_duration_seconds_sum"),
        value("nodeguard_admission_duration_seconds_count") as u64,
    )
}

/// A server on a loopback port, stopped when this is dropped.
struct Server {
    name: &'static str,
    clients: Vec<Arc<AdmissionClient>>,
    _stop: oneshot::Sender<()>,
}

fn start(
    name: &'static str,
    servers: &Runtime,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    ca_pem: &[u8],
) -> anyhow::Result<Server> {
    let listener = servers.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let address = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    servers.spawn(serve_tls(listener, tls, app, async {
        let _ = stopped.await;
    }));
    let clients = (0..CONNECTIONS)
        .map(|_| AdmissionClient::new(address, ca_pem, SERVICE_DNS_NAME).map(Arc::new))
        .collect::<anyhow::Result<_>>()?;
    Ok(Server {
        name,
        clients,
        _stop: stop,
    })
}

/// The bare server: reads the body, answers `answer`, nothing else.
fn bare_router(answer: Bytes) -> Router {
    let handler = move |_body: Bytes| {
        let answer = answer.clone();
        async move { ([(CONTENT_TYPE, "application/json")], answer) }
    };
    Router::new()
        .route(PATH, post(handler))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

async fn post_ok(client: &AdmissionClient, body: &Arc<Vec<u8>>) -> bool {
    matches!(
        client.post(PATH, body.to_vec()).await,
        Ok((StatusCode::OK, _))
    )
}

struct Throughput {
    per_second: f64,
    failed: usize,
    server_cpu_us_per_request: f64,
    client_cpu_us_per_request: f64,
}

/// Every connection sends its next request as soon as the last one is answered.
async fn closed_loop(server: &Server, body: &Arc<Vec<u8>>) -> Throughput {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + THROUGHPUT_TIME_CAP;
    let (server_cpu, client_cpu) = (
        thread_cpu_ns(SERVER_THREAD_NAME),
        thread_cpu_ns(CLIENT_THREAD_NAME),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for client in &server.clients {
        let (client, body, next) = (Arc::clone(client), Arc::clone(body), Arc::clone(&next));
        tasks.spawn(async move {
            let (mut ok, mut failed) = (0, 0);
            while next.fetch_add(1, Ordering::Relaxed) < THROUGHPUT_REQUESTS
                && Instant::now() < deadline
            {
                if post_ok(&client, &body).await {
                    ok += 1;
                } else {
                    failed += 1;
                }
            }
            (ok, failed)
        });
    }
    let (mut ok, mut failed) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        let (o, f) = joined.unwrap_or((0, 1));
        ok += o;
        failed += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let per_request = |ns: u64| ns as f64 / 1e3 / (ok + failed).max(1) as f64;
    Throughput {
        per_second: ok as f64 / elapsed,
        failed,
        server_cpu_us_per_request: per_request(
            thread_cpu_ns(SERVER_THREAD_NAME).saturating_sub(server_cpu),
        ),
        client_cpu_us_per_request: per_request(
            thread_cpu_ns(CLIENT_THREAD_NAME).saturating_sub(client_cpu),
        ),
    }
}

struct Latency {
    sent_per_second: f64,
    failed: usize,
    server_cpu_us_per_request: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

/// Requests leave at a fixed rate, round robin over the connections; each one's latency
/// runs from the moment it is sent to the moment its whole answer is read.
async fn open_loop(server: &Server, body: &Arc<Vec<u8>>) -> Latency {
    let total = (RATE_PER_SECOND * RATE_DURATION.as_secs()) as usize;
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / RATE_PER_SECOND));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let server_cpu = thread_cpu_ns(SERVER_THREAD_NAME);
    let started = Instant::now();
    for i in 0..total {
        ticker.tick().await;
        let (client, body) = (
            Arc::clone(&server.clients[i % CONNECTIONS]),
            Arc::clone(body),
        );
        tasks.spawn(async move {
            let sent = Instant::now();
            let ok = post_ok(&client, &body).await;
            (sent.elapsed(), ok)
        });
    }
    let sent_per_second = total as f64 / started.elapsed().as_secs_f64();
    let mut latencies = Vec::with_capacity(total);
    let mut failed = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((latency, true)) => latencies.push(latency),
            _ => failed += 1,
        }
    }
    let server_cpu = thread_cpu_ns(SERVER_THREAD_NAME).saturating_sub(server_cpu);
    latencies.sort();
    // Nearest rank.
    let rank = |p: usize| {
        let n = latencies.len();
        latencies
            .get((n * p).div_ceil(100).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    Latency {
        sent_per_second,
        failed,
        server_cpu_us_per_request: server_cpu as f64 / 1e3 / total as f64,
        p50: rank(50),
        p99: rank(99),
        max: latencies.last().copied().unwrap_or_default(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    // What `nodeguard serve` installs (info level, fmt layer), writing nowhere: the
    // request span's cost is part of the request path.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::sink)
        .try_init();

    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(SERVER_THREADS)
        .thread_name(SERVER_THREAD_NAME)
        .enable_all()
        .build()?;
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CLIENT_THREADS)
        .thread_name(CLIENT_THREAD_NAME)
        .enable_all()
        .build()?;

    let pki = generate_dev_pki(&[SERVICE_DNS_NAME]).context("cannot generate a CA")?;
    let tls_config = pki.server_config()?;

    let building = Instant::now();
    let machines: Vec<Machine> = (0..INVENTORY_NODES).map(Machine::numbered).collect();
    let inventory = SharedInventory::new(inventory_of(&machines));
    let nodes = inventory.read(|i| i.size().nodes);
    let metrics = Arc::new(Metrics::new());
    let state = AppState {
        inventory,
        config: nodeguard::config::SharedConfig::default(),
        events: None,
        readiness: None,
        refusals: None,
        metrics: metrics.admission.clone(),
    };

    let newcomer = Machine::numbered(0x00ff_ffff);
    let review = kubelet::node_review(
        "705ab4f5-6393-11e8-b7cc-42010a800002",
        Write::Create,
        &kubelet::node_object(&newcomer),
        None,
        &format!("system:node:{}", newcomer.name),
    );
    let body = Arc::new(serde_json::to_vec(&review)?);

    let ca = pki.ca_pem.as_bytes();
    let nodeguard = start(
        "nodeguard",
        &servers,
        Arc::clone(&tls_config),
        router(state),
        ca,
    )?;
    // The bare server answers exactly what nodeguard answers to this review.
    let (status, answer) = clients.block_on(nodeguard.clients[0].post(PATH, body.to_vec()))?;
    let allowed = serde_json::from_slice::<serde_json::Value>(&answer)?["response"]["allowed"]
        == serde_json::Value::Bool(true);
    if status != StatusCode::OK || !allowed {
        anyhow::bail!(
            "nodeguard did not allow the review: HTTP {status}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    let bare = start(
        "bare",
        &servers,
        tls_config,
        bare_router(answer.clone()),
        ca,
    )?;
    println!(
        "setup: {nodes} nodes in the inventory ({:.1} s to build); request a kubelet Node CREATE of {} bytes, answer {} bytes",
        building.elapsed().as_secs_f64(),
        body.len(),
        answer.len()
    );
    println!(
        "servers: one tokio runtime, {SERVER_THREADS} worker threads; clients: {CLIENT_THREADS} threads, \
         {CONNECTIONS} keep-alive HTTPS connections per server; {} CPUs on this machine",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let both = [&bare, &nodeguard];

    clients.block_on(async {
        for server in both {
            for client in &server.clients {
                for _ in 0..WARMUP_REQUESTS_PER_CONNECTION {
                    post_ok(client, &body).await;
                }
            }
        }
    });

    println!(
        "\nmax throughput (closed loop, {THROUGHPUT_REQUESTS} requests or {} s per run, {ROUNDS} runs each, alternating):",
        THROUGHPUT_TIME_CAP.as_secs()
    );
    let mut runs: [Vec<Throughput>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for (server, runs) in both.iter().zip(runs.iter_mut()) {
            let run = clients.block_on(closed_loop(server, &body));
            println!(
                "  {:<9} {:>8.0} req/s   server CPU {:>6.1} µs/req   client CPU {:>6.1} µs/req   failed {}",
                server.name,
                run.per_second,
                run.server_cpu_us_per_request,
                run.client_cpu_us_per_request,
                run.failed
            );
            runs.push(run);
        }
    }
    let median = |runs: &mut Vec<Throughput>, key: fn(&Throughput) -> f64| {
        runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
        key(&runs[runs.len() / 2])
    };
    let [bare_runs, nodeguard_runs] = &mut runs;
    let rate = [
        median(bare_runs, |r| r.per_second),
        median(nodeguard_runs, |r| r.per_second),
    ];
    let cpu = [
        median(bare_runs, |r| r.server_cpu_us_per_request),
        median(nodeguard_runs, |r| r.server_cpu_us_per_request),
    ];
    println!(
        "  median: bare {:.0} req/s, nodeguard {:.0} req/s: ratio {:.2} (budget ≥ 0.80)",
        rate[0],
        rate[1],
        rate[1] / rate[0]
    );
    println!(
        "  median server CPU per request: bare {:.1} µs, nodeguard {:.1} µs (+{:.1} µs): \
         requests per server CPU-second, nodeguard/bare {:.2}",
        cpu[0],
        cpu[1],
        cpu[1] - cpu[0],
        cpu[0] / cpu[1]
    );

    println!(
        "\nlatency at a fixed {RATE_PER_SECOND} req/s for {} s (open loop):",
        RATE_DURATION.as_secs()
    );
    let mut p99 = [Duration::ZERO; 2];
    for (server, p99) in both.iter().zip(p99.iter_mut()) {
        let handled_before = handler_time(&metrics);
        let run = clients.block_on(open_loop(server, &body));
        let handled_after = handler_time(&metrics);
        let handled = handled_after.1 - handled_before.1;
        let handler = if handled > 0 {
            format!(
                "   handler mean {:.1} µs",
                (handled_after.0 - handled_before.0) / handled as f64 * 1e6
            )
        } else {
            String::new()
        };
        println!(
            "  {:<9} sent {:>5.0} req/s   p50 {:.3} ms   p99 {:.3} ms   max {:.3} ms   failed {}   \
             server CPU {:.1} µs/req ({:.1}% of a core){handler}",
            server.name,
            run.sent_per_second,
            ms(run.p50),
            ms(run.p99),
            ms(run.max),
            run.failed,
            run.server_cpu_us_per_request,
            run.server_cpu_us_per_request * run.sent_per_second / 1e4,
        );
        *p99 = run.p99;
    }
    println!(
        "  nodeguard p99 {:.3} ms: {} the 2 ms budget (bare p99 {:.3} ms)",
        ms(p99[1]),
        if p99[1] <= Duration::from_millis(2) {
            "within"
        } else {
            "OVER"
        },
        ms(p99[0])
    );

    drop((bare, nodeguard));
    servers.shutdown_timeout(Duration::from_secs(1));
    clients.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
