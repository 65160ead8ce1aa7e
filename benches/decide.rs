//! Prints how long one admission decision takes (decode of a kubelet-sized Node review
//! plus the checks) with 500, 5,000 and 50,000 nodes in the inventory, each node with
//! its ledger record (two bound keys, a client certificate, three boots), and the memory
//! the inventory holds. Figures only: nothing here passes or fails.
//!
//!     cargo bench --bench decide

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use nodeguard::identity::{KeyBinding, KeyFingerprint, KubeletSigner, NodeClaim, NodeDoc};
use nodeguard::inventory::Inventory;
use nodeguard::ledger::{Evidence, KeyObservation, NodeIdentity, NodeObservation};
use nodeguard::policy::{self, Config, NodeReview, Operation};
use nodeguard_testkit::kubelet::{self, Machine, Write};

fn claim(m: &Machine) -> NodeClaim {
    let text = kubelet::node_object(m).to_string();
    let doc: NodeDoc<'_> = serde_json::from_str(&text).unwrap();
    NodeClaim::from_doc(&doc).unwrap()
}

fn inventory(nodes: u32) -> Inventory {
    // Build one template claim and vary its values: decoding 50,000 Node JSONs would
    // only time the setup.
    let mut inventory = Inventory::new();
    let template = claim(&Machine::numbered(0));
    for i in 0..nodes {
        let m = Machine::numbered(i);
        let mut c = template.clone();
        c.name = m.name.as_str().into();
        c.machine_id = nodeguard::identity::MachineId::parse(&m.machine_id);
        c.system_uuid = nodeguard::identity::SystemUuid::parse(&m.system_uuid);
        c.boot_id = nodeguard::identity::BootId::parse(&m.boot_id);
        c.provider_id = m
            .provider_id
            .as_deref()
            .and_then(nodeguard::identity::ProviderId::parse);
        c.internal_ips = vec![m.internal_ip.parse().unwrap()];
        c.hostnames = nodeguard::identity::Hostname::parse(&m.name)
            .into_iter()
            .collect();
        inventory.apply_node_as_written(c);
        inventory.apply_identity(ledger_record(&m, i).entry().unwrap());
    }
    inventory
}

/// What the recorder keeps for a node that rebooted twice and renewed its certificates.
fn ledger_record(m: &Machine, i: u32) -> NodeIdentity {
    let now = jiff::Timestamp::now();
    let mut record = NodeIdentity::blank(&m.name);
    for boot in 0..3u32 {
        let mut booted = m.clone();
        booted.boot_id = format!("{boot:08x}-40ea-4cf5-9f24-{i:012x}");
        if boot == 2 {
            booted.boot_id = m.boot_id.clone();
        }
        let mut observation = NodeObservation::of(&claim(&booted));
        observation.uid = Some(format!("6f0c1b6e-1d2a-4c3b-9e8f-{i:012x}"));
        record.observe_node(&observation, now, Evidence::Watch);
    }
    for (n, signer) in [KubeletSigner::Client, KubeletSigner::Serving]
        .into_iter()
        .enumerate()
    {
        let mut fingerprint = [0u8; 32];
        fingerprint[..4].copy_from_slice(&i.to_be_bytes());
        fingerprint[4] = n as u8;
        record.observe_key(
            &KeyObservation {
                csr: format!("csr-{i:05x}{n}"),
                binding: KeyBinding {
                    node: m.name.as_str().into(),
                    fingerprint: KeyFingerprint(fingerprint),
                    signer,
                    credential_id: (signer == KubeletSigner::Client)
                        .then(|| format!("X509SHA256={:064x}", i).into()),
                },
            },
            now,
        );
    }
    record
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The part of an AdmissionReview the node checks read, decoded as the webhook does.
#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    request: Request<'a>,
}

#[derive(serde::Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    object: NodeDoc<'a>,
}

/// The median, over 15 rounds of 2,000 calls, of the time one call of `f` takes.
fn median_time(mut f: impl FnMut()) -> Duration {
    let rounds = 15;
    let iterations = 2_000;
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..iterations {
            f();
        }
        samples.push(start.elapsed() / iterations);
    }
    samples.sort();
    samples[rounds / 2]
}

fn decode(body: &[u8]) -> Option<NodeClaim> {
    let envelope: Envelope<'_> = serde_json::from_slice(black_box(body)).unwrap();
    NodeClaim::from_doc(&envelope.request.object)
}

/// Decoding a review and deciding it, per decision.
fn time_decisions(inventory: &Inventory, body: &[u8]) -> Duration {
    let config = Config::default();
    let now = jiff::Timestamp::now();
    median_time(|| {
        let review = NodeReview {
            labels: Vec::new(),
            operation: Operation::Create,
            object: decode(body),
            old_object: None,
        };
        black_box(policy::decide_node(&review, inventory, &config, now));
    })
}

/// A registered node's status update with a new boot id (a reboot): the path where
/// `two-kubelets` reads the node's ledger record.
fn time_reboot(inventory: &Inventory) -> Duration {
    let config = Config::default();
    let now = jiff::Timestamp::now();
    let before = Machine::numbered(7);
    let mut after = before.clone();
    after.boot_id = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0".into();
    let old = kubelet::node_object(&before);
    let body = kubelet::node_review(
        "uid",
        Write::StatusPatch,
        &kubelet::node_object(&after),
        Some(&old),
        "system:node:node-00007",
    )
    .to_string();
    let old_claim = claim(&before);
    median_time(|| {
        let review = NodeReview {
            labels: Vec::new(),
            operation: Operation::Update,
            object: decode(body.as_bytes()),
            old_object: Some(old_claim.clone()),
        };
        black_box(policy::decide_node(&review, inventory, &config, now));
    })
}

/// Decoding a review alone.
fn time_decode(body: &[u8]) -> Duration {
    median_time(|| {
        black_box(decode(body));
    })
}

fn main() {
    let newcomer = kubelet::node_object(&Machine::numbered(0x00ff_ffff));
    let body =
        kubelet::node_review("uid", Write::Create, &newcomer, None, "system:node:x").to_string();
    println!(
        "review body: {} bytes (a kubelet Node CREATE with 27 images)",
        body.len()
    );

    println!(
        "decode alone: {:.1} µs per review",
        time_decode(body.as_bytes()).as_secs_f64() * 1e6
    );
    let mut at_500 = Duration::ZERO;
    for nodes in [500, 5_000, 50_000] {
        let before = rss_kib();
        let inventory = inventory(nodes);
        let after = rss_kib();
        let per_decision = time_decisions(&inventory, body.as_bytes());
        let reboot = time_reboot(&inventory);
        if nodes == 500 {
            at_500 = per_decision;
        }
        println!(
            "{nodes:>6} nodes: {:>7.1} µs per decision (decode + checks), {:.2}× the 500-node time; a reboot's status update {:.1} µs; inventory with ledger RSS +{:.1} MiB",
            per_decision.as_secs_f64() * 1e6,
            per_decision.as_secs_f64() / at_500.as_secs_f64(),
            reboot.as_secs_f64() * 1e6,
            (after.saturating_sub(before)) as f64 / 1024.0
        );
        let started = std::time::Instant::now();
        let report = nodeguard::policy::audit::audit(nodeguard::policy::audit::AuditInput {
            inventory: &inventory,
            config: &nodeguard::policy::Config::default(),
            now: jiff::Timestamp::now(),
            labels: None,
            pending: &[],
        });
        println!(
            "{nodes:>6} nodes: the whole audit (two decisions per node, the field statistics) {:.0} ms, {} verdicts",
            started.elapsed().as_secs_f64() * 1e3,
            report.verdicts.len()
        );
        drop(inventory);
    }
}
