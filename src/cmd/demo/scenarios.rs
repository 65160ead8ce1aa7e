//! The ways a cloned machine shows up (DESIGN: "The failure it exists to stop"), each as
//! the cluster it meets and the request the API server sends for it.

use rcgen::KeyPair;
use serde_json::Value;

use super::kubelet::{self, Machine, Requester, Write};
use crate::identity::{CsrDoc, KeyBinding, NodeClaim, NodeDoc};
use crate::inventory::Inventory;
use crate::ledger::{Evidence, NodeIdentity, NodeObservation};
use crate::policy::Outcome;
use crate::webhook::Webhook;

/// What the kubelet was doing, which decides how its log line reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeletAction {
    Register,
    UpdateStatus,
    RequestCertificate,
}

pub struct Scenario {
    pub key: char,
    pub title: &'static str,
    /// The cluster as the watchers would have it when the request arrives.
    pub inventory: Inventory,
    pub endpoint: Webhook,
    pub action: KubeletAction,
    /// The node the kubelet runs as (for its log line).
    pub node: String,
    pub review: Value,
    pub expected: Outcome,
}

/// A small healthy cluster: a control plane and three workers, all Ready, worker-1's
/// kubelet client key bound by its issued CSR.
pub struct HealthyCluster {
    pub machines: Vec<Machine>,
    pub worker1_key: KeyPair,
}

impl HealthyCluster {
    pub fn new() -> Result<Self, rcgen::Error> {
        Ok(Self {
            machines: vec![
                Machine::new("control-plane", 0x10, "10.0.0.2"),
                Machine::new("worker-1", 0x11, "10.0.0.11"),
                Machine::new("worker-2", 0x12, "10.0.0.12"),
                Machine::new("worker-3", 0x13, "10.0.0.13"),
            ],
            worker1_key: kubelet::kubelet_key()?,
        })
    }

    pub fn machine(&self, name: &str) -> Machine {
        self.machines
            .iter()
            .find(|m| m.name == name)
            .cloned()
            .unwrap_or_else(|| Machine::new(name, 0xee, "10.0.0.254"))
    }

    /// The inventory the watchers build from this cluster's Nodes and CSRs.
    pub fn inventory(&self) -> Result<Inventory, rcgen::Error> {
        let mut inventory = inventory_of(&self.machines);
        let pem = kubelet::csr_pem(&self.worker1_key, "worker-1", &[], &[])?;
        let csr = kubelet::issued(kubelet::csr_object(
            "csr-8x2kq",
            kubelet::CLIENT_SIGNER,
            &pem,
            &Requester::Bootstrap {
                token_id: "abcdef".into(),
            },
        ));
        inventory.apply_csr("csr-8x2kq", binding_of(&csr));
        Ok(inventory)
    }
}

/// Indexes kubelet-shaped Nodes exactly as the watchers do (through `NodeDoc`), with the
/// ledger the recorder writes when it first sees them: a cluster that existed before
/// nodeguard was installed.
pub fn inventory_of(machines: &[Machine]) -> Inventory {
    let mut inventory = nodes_of(machines);
    let now = machines
        .iter()
        .map(|m| m.heartbeat)
        .max()
        .unwrap_or_else(jiff::Timestamp::now);
    crate::policy::sharing::record_first_sight(
        &mut inventory,
        &crate::policy::Config::default(),
        now,
    );
    inventory
}

/// The Nodes alone, as the watchers index them, without a ledger.
pub fn nodes_of(machines: &[Machine]) -> Inventory {
    let mut inventory = Inventory::new();
    for machine in machines {
        let text = kubelet::node_object(machine).to_string();
        if let Ok(doc) = serde_json::from_str::<NodeDoc<'_>>(&text)
            && let Some(claim) = NodeClaim::from_doc(&doc)
        {
            inventory.apply_node_as_written(claim);
        }
    }
    inventory
}

fn binding_of(csr: &Value) -> Option<KeyBinding> {
    let text = csr.to_string();
    serde_json::from_str::<CsrDoc<'_>>(&text)
        .ok()
        .and_then(|doc| KeyBinding::from_doc(&doc))
}

/// The cases, in the order the README's table tells them: (a)–(f) from the design's list,
/// (g)–(i), the incident itself, and (j), a laptop cluster.
pub fn all() -> Result<Vec<Scenario>, rcgen::Error> {
    with_cluster(&HealthyCluster::new()?)
}

/// The cases against a given healthy cluster (tests pass one whose key they know).
pub fn with_cluster(cluster: &HealthyCluster) -> Result<Vec<Scenario>, rcgen::Error> {
    let worker1 = cluster.machine("worker-1");
    let mut scenarios = Vec::new();

    // (a) The admin renamed the clone but kept the disk: machine-id and, through the
    // DHCP client id derived from it, the address.
    let mut clone = worker1.clone();
    clone.name = "worker-4".into();
    clone.system_uuid = "564d2a7e-90b1-4c3f-8e21-7f0c9a4b5d61".into();
    clone.boot_id = "3c9e1f20-5b7a-4d8e-a6f1-0b2c3d4e5f60".into();
    scenarios.push(Scenario {
        key: 'a',
        title: "a clone of worker-1 joins under a new name with the same machine-id",
        inventory: cluster.inventory()?,
        endpoint: Webhook::Nodes,
        action: KubeletAction::Register,
        node: clone.name.clone(),
        review: kubelet::node_review(
            "b0d3a1c2-0a01-4a5e-9f1d-000000000001",
            Write::Create,
            &kubelet::node_object(&clone),
            None,
            "system:node:worker-4",
        ),
        expected: Outcome::Denied,
    });

    // (b) Same name, another machine, while the original is Ready.
    let impostor = Machine::new("worker-1", 0x21, "10.0.0.21");
    scenarios.push(Scenario {
        key: 'b',
        title: "another machine registers as worker-1 while worker-1 is Ready",
        inventory: cluster.inventory()?,
        endpoint: Webhook::Nodes,
        action: KubeletAction::Register,
        node: "worker-1".into(),
        review: kubelet::node_review(
            "b0d3a1c2-0a01-4a5e-9f1d-000000000002",
            Write::Create,
            &kubelet::node_object(&impostor),
            None,
            "system:node:worker-1",
        ),
        expected: Outcome::Denied,
    });

    // (c) The clone kept worker-1's kubelet key and bootstraps under a new name.
    let pem = kubelet::csr_pem(&cluster.worker1_key, "worker-4", &[], &[])?;
    let csr = kubelet::csr_object(
        "csr-q7w4n",
        kubelet::CLIENT_SIGNER,
        &pem,
        &Requester::Bootstrap {
            token_id: "07401b".into(),
        },
    );
    scenarios.push(Scenario {
        key: 'c',
        title: "a clone re-uses worker-1's kubelet key to bootstrap as worker-4",
        inventory: cluster.inventory()?,
        endpoint: Webhook::Csrs,
        action: KubeletAction::RequestCertificate,
        node: "worker-4".into(),
        review: kubelet::csr_review("b0d3a1c2-0a01-4a5e-9f1d-000000000003", &csr),
        expected: Outcome::Denied,
    });

    // (d) A fresh key, but the name of a live node.
    let pem = kubelet::csr_pem(&kubelet::kubelet_key()?, "worker-2", &[], &[])?;
    let csr = kubelet::csr_object(
        "csr-m2p9z",
        kubelet::CLIENT_SIGNER,
        &pem,
        &Requester::Bootstrap {
            token_id: "07401b".into(),
        },
    );
    scenarios.push(Scenario {
        key: 'd',
        title: "a machine bootstraps with a token as worker-2, which is alive",
        inventory: cluster.inventory()?,
        endpoint: Webhook::Csrs,
        action: KubeletAction::RequestCertificate,
        node: "worker-2".into(),
        review: kubelet::csr_review("b0d3a1c2-0a01-4a5e-9f1d-000000000004", &csr),
        expected: Outcome::Denied,
    });

    // (e) The original after a reboot: the kubelet re-sends its CREATE.
    let rebooted = worker1.rebooted("7d1e2f30-4a5b-4c6d-8e9f-a0b1c2d3e4f5");
    scenarios.push(Scenario {
        key: 'e',
        title: "worker-1 itself reboots and its kubelet registers again",
        inventory: cluster.inventory()?,
        endpoint: Webhook::Nodes,
        action: KubeletAction::Register,
        node: "worker-1".into(),
        review: kubelet::node_review(
            "b0d3a1c2-0a01-4a5e-9f1d-000000000005",
            Write::Create,
            &kubelet::node_object(&rebooted),
            None,
            "system:node:worker-1",
        ),
        expected: Outcome::Allowed,
    });

    // (f) An image that gives every node one machine-id (AKS node images of early 2023
    // did): the value proves nothing, a new node is warned about, not refused.
    let shared = "5f2d8c1e9a7b4c3d8e6f0a1b2c3d4e5f";
    let fleet: Vec<Machine> = (1..=3)
        .map(|n| {
            let mut m = Machine::new(
                &format!("aks-pool-{n}"),
                0x30 + n,
                &format!("10.224.0.{}", 3 + n),
            );
            m.machine_id = shared.into();
            m
        })
        .collect();
    let mut newcomer = Machine::new("aks-pool-4", 0x34, "10.224.0.7");
    newcomer.machine_id = shared.into();
    scenarios.push(Scenario {
        key: 'f',
        title: "a new node joins a pool whose nodes all share one machine-id",
        inventory: inventory_of(&fleet),
        endpoint: Webhook::Nodes,
        action: KubeletAction::Register,
        node: newcomer.name.clone(),
        review: kubelet::node_review(
            "b0d3a1c2-0a01-4a5e-9f1d-000000000006",
            Write::Create,
            &kubelet::node_object(&newcomer),
            None,
            "system:node:aks-pool-4",
        ),
        expected: Outcome::Warned,
    });

    // (g) The incident itself: the clone holds worker-1's name and credentials, so it
    // creates nothing; it patches worker-1's status from another VM.
    let mut twin = worker1.rebooted("3c9e1f20-5b7a-4d8e-a6f1-0b2c3d4e5f60");
    twin.system_uuid = "564d2a7e-90b1-4c3f-8e21-7f0c9a4b5d61".into();
    scenarios.push(Scenario {
        key: 'g',
        title: "a clone with worker-1's name and credentials patches worker-1's status",
        inventory: cluster.inventory()?,
        endpoint: Webhook::Nodes,
        action: KubeletAction::UpdateStatus,
        node: "worker-1".into(),
        review: kubelet::node_review(
            "b0d3a1c2-0a01-4a5e-9f1d-000000000007",
            Write::StatusPatch,
            &kubelet::node_object(&twin),
            Some(&kubelet::node_object(&worker1)),
            "system:node:worker-1",
        ),
        expected: Outcome::Denied,
    });

    // (h) The incident with a perfect copy: same machine-id, same system UUID, same
    // credentials; only the boot id tells the two kubelets apart. The ledger has seen
    // worker-1's boot, then the copy's, then worker-1's again.
    let copy = worker1.rebooted("d8f2c1a0-1b2c-4d3e-8f4a-5b6c7d8e9f00");
    let mut inventory = cluster.inventory()?;
    if let Some(entry) = ledger_after(&[&worker1, &copy, &worker1]).entry() {
        inventory.apply_identity(entry);
    }
    scenarios.push(Scenario {
        key: 'h',
        title: "a perfect copy of worker-1 and worker-1 take turns writing worker-1's status",
        inventory,
        endpoint: Webhook::Nodes,
        action: KubeletAction::UpdateStatus,
        node: "worker-1".into(),
        review: kubelet::node_review(
            "b0d3a1c2-0a01-4a5e-9f1d-000000000008",
            Write::StatusPatch,
            &kubelet::node_object(&copy),
            Some(&kubelet::node_object(&worker1)),
            "system:node:worker-1",
        ),
        expected: Outcome::Denied,
    });

    // (i) The clone of (g) waits: refused while worker-1 ran, it retries for ever. Since
    // then worker-1 wrote its status (two machines proven), and now worker-1 reboots: no
    // status for 15 minutes, and the clone registers once more.
    let mut rebooting = worker1.clone();
    rebooting.heartbeat = worker1.heartbeat - jiff::SignedDuration::from_mins(15);
    let mut machines = cluster.machines.clone();
    for machine in &mut machines {
        if machine.name == "worker-1" {
            *machine = rebooting.clone();
        }
    }
    let mut inventory = inventory_of(&machines);
    let mut record = ledger_after(&[&worker1]);
    if let Some(claim) = claim_of(&twin) {
        let refusal = crate::record::RefusalObservation {
            node: "worker-1".into(),
            node_uid: None,
            check: "name-takeover".into(),
            machine_id: claim.machine_id.clone(),
            system_uuid: claim.system_uuid.clone(),
            provider_id: None,
            boot_id: claim.boot_id.clone(),
            node_resource_version: None,
            node_heartbeat: Some(rebooting.heartbeat - jiff::SignedDuration::from_mins(5)),
        };
        record.observe_refusal(
            &refusal,
            rebooting.heartbeat - jiff::SignedDuration::from_mins(5),
        );
    }
    if let Some(claim) = claim_of(&rebooting) {
        record.observe_node(
            &NodeObservation::of(&claim),
            rebooting.heartbeat,
            Evidence::Watch,
        );
    }
    if let Some(entry) = record.entry() {
        inventory.apply_identity(entry);
    }
    scenarios.push(Scenario {
        key: 'i',
        title: "the clone of (g), refused while worker-1 ran, registers again while worker-1 reboots",
        inventory,
        endpoint: Webhook::Nodes,
        action: KubeletAction::Register,
        node: "worker-1".into(),
        review: kubelet::node_review(
            "b0d3a1c2-0a01-4a5e-9f1d-000000000009",
            Write::Create,
            &kubelet::node_object(&twin),
            None,
            "system:node:worker-1",
        ),
        expected: Outcome::Denied,
    });

    // (j) A laptop cluster: minikube's nodes are containers on one host, with one
    // machine-id baked into the image and the host's running kernel.
    let host_boot = "8ae9952f-63cd-46a4-b013-ffe977e95508";
    let mut first = Machine::new("minikube", 0x50, "192.168.49.2");
    first.machine_id = "e366bd4b77b9d6be2d67552f69964f40".into();
    first.boot_id = host_boot.into();
    let mut second = Machine::new("minikube-m02", 0x51, "192.168.49.3");
    second.machine_id = first.machine_id.clone();
    second.boot_id = host_boot.into();
    scenarios.push(Scenario {
        key: 'j',
        title: "the second node of a minikube cluster joins: a container on the same host",
        inventory: inventory_of(&[first]),
        endpoint: Webhook::Nodes,
        action: KubeletAction::Register,
        node: "minikube-m02".into(),
        review: kubelet::node_review(
            "b0d3a1c2-0a01-4a5e-9f1d-00000000000a",
            Write::Create,
            &kubelet::node_object(&second),
            None,
            "system:node:minikube-m02",
        ),
        expected: Outcome::Warned,
    });

    Ok(scenarios)
}

/// A machine's Node as the watchers decode it.
fn claim_of(machine: &Machine) -> Option<NodeClaim> {
    let text = kubelet::node_object(machine).to_string();
    let doc = serde_json::from_str::<NodeDoc<'_>>(&text).ok()?;
    NodeClaim::from_doc(&doc)
}

/// The NodeIdentity the recorder writes after seeing a node report these machines'
/// states in turn, ten seconds apart (the kubelet's status period).
pub fn ledger_after(states: &[&Machine]) -> NodeIdentity {
    let name = states.first().map_or("", |m| m.name.as_str());
    let mut record = NodeIdentity::blank(name);
    let mut at = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60);
    for machine in states {
        let text = kubelet::node_object(machine).to_string();
        if let Ok(doc) = serde_json::from_str::<NodeDoc<'_>>(&text)
            && let Some(claim) = NodeClaim::from_doc(&doc)
        {
            record.observe_node(&NodeObservation::of(&claim), at, Evidence::Confirmed);
        }
        at += jiff::SignedDuration::from_secs(10);
    }
    record
}
