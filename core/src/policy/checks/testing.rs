//! Builders shared by the checks' unit tests: kubelet-shaped objects, decoded the way
//! the webhook decodes them.

use jiff::Timestamp;

use crate::identity::{CsrDoc, KeyBinding, KubeletSigner, NodeClaim, NodeDoc};
use crate::inventory::{Inventory, LedgerEntry};
use crate::ledger::{SharedMark, SharingEvidence, ValueField};
use crate::policy::{
    Config, CsrReview, KubeletCsr, NodeReview, Operation, Verdict, decide_csr, decide_node,
};
use crate::sample::{self as kubelet, Machine, Requester};

pub fn now() -> Timestamp {
    "2026-11-27T12:00:00Z".parse().unwrap()
}

pub fn claim_of(object: &serde_json::Value) -> NodeClaim {
    let text = object.to_string();
    let doc: NodeDoc<'_> = serde_json::from_str(&text).unwrap();
    NodeClaim::from_doc(&doc).unwrap()
}

pub fn claim(machine: &Machine) -> NodeClaim {
    claim_of(&kubelet::node_object(machine))
}

pub fn cluster(machines: &[&Machine]) -> Inventory {
    let mut inventory = Inventory::new();
    for machine in machines {
        inventory.apply_node_as_written(claim(machine));
    }
    inventory
}

pub fn create(machine: &Machine) -> NodeReview {
    NodeReview {
        labels: Vec::new(),
        operation: Operation::Create,
        object: Some(claim(machine)),
        old_object: None,
    }
}

pub fn update(before: &Machine, after: &Machine) -> NodeReview {
    NodeReview {
        labels: Vec::new(),
        operation: Operation::Update,
        object: Some(claim(after)),
        old_object: Some(claim(before)),
    }
}

pub fn decide(review: &NodeReview, inventory: &Inventory) -> Verdict {
    decide_node(review, inventory, &Config::default(), now())
}

pub fn csr_review(csr: &serde_json::Value) -> CsrReview {
    let text = csr.to_string();
    let doc: CsrDoc<'_> = serde_json::from_str(&text).unwrap();
    let spec = doc.spec.as_ref().unwrap();
    let signer = KubeletSigner::from_name(spec.signer_name.as_deref().unwrap());
    CsrReview {
        operation: Operation::Create,
        kubelet: signer.map(|signer| {
            KubeletCsr::new(
                signer,
                spec.request.as_deref().unwrap_or(""),
                spec.username.as_deref().unwrap_or(""),
                spec.groups.iter().flatten().map(|g| &**g),
            )
        }),
    }
}

pub fn decide_csr_default(review: &CsrReview, inventory: &Inventory) -> Verdict {
    decide_csr(review, inventory, &Config::default(), now())
}

/// Binds `key` to `node` the way an issued kubelet client CSR does.
pub fn bind_key(inventory: &mut Inventory, csr_name: &str, key: &rcgen::KeyPair, node: &str) {
    let pem = kubelet::csr_pem(key, node, &[], &[]).unwrap();
    let csr = kubelet::issued(kubelet::csr_object(
        csr_name,
        kubelet::CLIENT_SIGNER,
        &pem,
        &Requester::Bootstrap {
            token_id: "abcdef".into(),
        },
    ));
    let text = csr.to_string();
    let doc: CsrDoc<'_> = serde_json::from_str(&text).unwrap();
    let binding = KeyBinding::from_doc(&doc);
    assert!(binding.is_some(), "an issued kubelet CSR binds its key");
    inventory.apply_csr(csr_name, binding);
}

/// A worker whose kubelet wrote its status 20 s before [`now`].
pub fn worker(n: u8) -> Machine {
    let mut machine = Machine::new(&format!("worker-{n}"), n, &format!("10.0.0.{}", 10 + n));
    machine.heartbeat = now() - jiff::SignedDuration::from_secs(20);
    machine
}

/// Marks `value` of `field` as shared when nodeguard first saw the cluster, on the
/// records of `nodes`, as the recorder does for Nodes older than the ledger.
pub fn shared_at_first_sight(
    inventory: &mut Inventory,
    nodes: &[&str],
    field: ValueField,
    value: &str,
) {
    for node in nodes {
        let mut entry = inventory
            .identity(node)
            .cloned()
            .unwrap_or_else(|| LedgerEntry::named(node));
        let mut marks = entry.shared.to_vec();
        marks.push(SharedMark {
            field,
            value: value.into(),
            evidence: SharingEvidence::FirstSight,
            from: None,
        });
        entry.shared = marks.into();
        inventory.apply_identity(entry);
    }
}
