//! Writes `examples/cluster-dump.json`: what `kubectl get nodes,csr,nodeidentities -o
//! json` prints for a six-node cluster made from one VM template, into which a clone got
//! while nodeguard only warned. Regenerate with
//! `cargo run --example cluster_dump > examples/cluster-dump.json`.
//!
//! - nodeguard was installed 60 days before the dump, in `mode: warn`; the Nodes of the
//!   control plane and worker-1..4 are 400 days old, so their records mark what they
//!   shared then (the template's machine-id) as shared at first sight.
//! - Every node reports the template's machine-id (baked into the image): the field
//!   cannot tell these machines apart.
//! - worker-5, 40 days old, is a copy of worker-2 moved rather than copied in the
//!   hypervisor (same SMBIOS UUID), with worker-2's static address and its kubelet key,
//!   joined with a bootstrap token under a new name: warned, not refused. What it shares
//!   with worker-2 is not shared by evidence: the next copy is refused.
//! - worker-1's name is wanted by a copy of worker-1 with its own VM UUID, refused three
//!   hours ago while worker-1 ran; worker-1 wrote its status since, so the ledger holds it
//!   as a second machine, and its bootstrap CSR for worker-1, made with a new key, is
//!   still pending.
//! - worker-3 has been written by two machines (boot A, then B, then A again): the ledger
//!   holds the conflict, and the Node reports the refused boot, the copy having written
//!   last.
//! - worker-9 asked for a certificate two hours ago and never registered.
//!
//! Nodes have the shape a kubelet registers (the kind template: nodeInfo, 27 images);
//! CSRs carry real P-256 requests and certificates signed by a throwaway CA.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use jiff::{SignedDuration, Timestamp};
use nodeguard::identity::csr::CsrDoc;
use nodeguard::identity::node::NodeDoc;
use nodeguard::identity::{KeyBinding, NodeClaim};
use nodeguard::inventory::Inventory;
use nodeguard::ledger::NodeIdentity;
use nodeguard::policy::Config;
use nodeguard::policy::sharing::{self, Judging};
use nodeguard::record::{Evidence, KeyObservation, NodeObservation, RefusalObservation};
use nodeguard_testkit::kubelet::{self, Machine, Requester};
use serde::Deserialize;
use serde_json::{Value, json};

/// When the dump was taken: every kubelet's last heartbeat.
const TAKEN: &str = "2026-11-30T09:00:00Z";
const TEMPLATE_MACHINE_ID: &str = "7d3b0b8e54c84f5f9a6c1e2d3f4a5b6c";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let taken: Timestamp = TAKEN.parse()?;
    let created = |days: i64| (taken - SignedDuration::from_hours(24 * days)).to_string();
    let uid = |seed: u8| format!("5e1f0c2a-7b3d-4c8e-9a1f-0000000000{seed:02x}");

    let mut machines: Vec<Machine> = [
        ("control-plane", 0x10, "10.0.0.2"),
        ("worker-1", 0x11, "10.0.0.11"),
        ("worker-2", 0x12, "10.0.0.12"),
        ("worker-3", 0x13, "10.0.0.13"),
        ("worker-4", 0x14, "10.0.0.14"),
    ]
    .into_iter()
    .map(|(name, seed, ip)| {
        let mut machine = Machine::new(name, seed, ip);
        machine.machine_id = TEMPLATE_MACHINE_ID.to_string();
        machine.heartbeat = taken;
        machine
    })
    .collect();
    let mut clone = machines[2].clone();
    clone.name = "worker-5".to_string();
    clone.boot_id = "15a0427b-40ea-4cf5-9f24-53d6e200ef15".to_string();
    machines.push(clone);
    // worker-3's copy: same everything but its boot.
    let worker3_copy = machines[3].rebooted("3c9e1f20-5b7a-4d8e-a6f1-0b2c3d4e5f60");

    let mut items = Vec::new();
    let mut nodes = Vec::new();
    for (index, machine) in machines.iter().enumerate() {
        let seed = 0x10 + u8::try_from(index)?;
        let shown = if machine.name == "worker-3" {
            &worker3_copy
        } else {
            machine
        };
        let mut node = kubelet::node_object(shown);
        node["metadata"]["uid"] = json!(uid(seed));
        node["metadata"]["creationTimestamp"] =
            json!(created(if machine.name == "worker-5" { 40 } else { 400 }));
        node["metadata"]["resourceVersion"] = json!(format!("{}", 90_000 + index));
        nodes.push(node.clone());
        items.push(node);
    }

    // Issued client CSRs: worker-2's key, and worker-5 joining with the same key.
    let worker2_key = kubelet::kubelet_key()?;
    let worker9_key = kubelet::kubelet_key()?;
    let mut csrs = Vec::new();
    for (name, node, key, requester, age_minutes) in [
        (
            "csr-7qk2m",
            "worker-2",
            &worker2_key,
            Requester::Node {
                name: "worker-2".into(),
            },
            50,
        ),
        (
            "csr-bx9wd",
            "worker-5",
            &worker2_key,
            Requester::Bootstrap {
                token_id: "07401b".into(),
            },
            20,
        ),
        (
            "csr-p4nzt",
            "worker-9",
            &worker9_key,
            Requester::Bootstrap {
                token_id: "07401b".into(),
            },
            120,
        ),
    ] {
        let pem = kubelet::csr_pem(key, node, &[], &[])?;
        let mut csr = kubelet::issued(kubelet::csr_object(
            name,
            kubelet::CLIENT_SIGNER,
            &pem,
            &requester,
        ));
        let at = (taken - SignedDuration::from_mins(age_minutes)).to_string();
        csr["metadata"] = json!({
            "name": name,
            "generateName": "csr-",
            "uid": format!("c5a1d6e0-2f4b-4a7c-8e9d-{:012x}", age_minutes),
            "creationTimestamp": at,
            "resourceVersion": format!("{}", 91_000 + age_minutes),
        });
        csr["status"]["conditions"][0]["lastUpdateTime"] = json!(at);
        csr["status"]["conditions"][0]["lastTransitionTime"] = json!(at);
        csrs.push(csr.clone());
        items.push(csr);
    }

    // The copy of worker-1 asking for worker-1's credentials with a bootstrap token:
    // pending, since nodeguard was down when it was asked for.
    let copy_key = kubelet::kubelet_key()?;
    let pem = kubelet::csr_pem(&copy_key, "worker-1", &[], &[])?;
    let mut pending = kubelet::csr_object(
        "csr-zq8mv",
        kubelet::CLIENT_SIGNER,
        &pem,
        &Requester::Bootstrap {
            token_id: "07401b".into(),
        },
    );
    let asked = (taken - SignedDuration::from_mins(10)).to_string();
    pending["metadata"] = json!({
        "name": "csr-zq8mv",
        "generateName": "csr-",
        "uid": "c5a1d6e0-2f4b-4a7c-8e9d-00000000000a",
        "creationTimestamp": asked,
        "resourceVersion": "91500",
    });
    items.push(pending);

    // The ledger nodeguard keeps: one record per node, and worker-9's from its CSR.
    let observe = |node: &Value| -> Option<NodeObservation> {
        let text = node.to_string();
        let doc: NodeDoc<'_> = serde_json::from_str(&text).ok()?;
        NodeClaim::from_doc(&doc).map(|claim| NodeObservation::of(&claim))
    };
    let binding = |csr: &Value| -> Option<KeyBinding> {
        let doc = CsrDoc::deserialize(csr).ok()?;
        KeyBinding::from_doc(&doc)
    };
    // The recorder judges each record against the cluster as it holds it then.
    let mut inventory = Inventory::new();
    for node in &nodes {
        let text = node.to_string();
        let doc: NodeDoc<'_> = serde_json::from_str(&text)?;
        if let Some(claim) = NodeClaim::from_doc(&doc) {
            inventory.apply_node_as_written(claim);
        }
    }
    let config = Config::default();
    let installed = taken - SignedDuration::from_hours(24 * 60);
    let joined = |name: &str| {
        if name == "worker-5" {
            taken - SignedDuration::from_hours(24 * 40)
        } else {
            installed
        }
    };
    let mut records = Vec::new();
    for (index, machine) in machines.iter().enumerate() {
        let mut record = NodeIdentity::blank(&machine.name);
        let first = joined(&machine.name);
        let node = kubelet::node_object(machine);
        let mut node = node;
        node["metadata"]["uid"] = nodes[index]["metadata"]["uid"].clone();
        node["metadata"]["resourceVersion"] = json!(format!("{}", 80_000 + index));
        node["metadata"]["creationTimestamp"] =
            nodes[index]["metadata"]["creationTimestamp"].clone();
        let observation = observe(&node).ok_or("a Node that does not parse")?;
        let judging = Judging {
            inventory: &inventory,
            config: &config,
            now: first,
        };
        record.update(|r| sharing::record_node(r, &observation, Evidence::Confirmed, judging));
        if machine.name == "worker-1" {
            // Its copy refused three hours ago, then worker-1's status written: proven.
            let refused_at = taken - SignedDuration::from_hours(3);
            let mut copy = machine.clone();
            copy.system_uuid = "564d2a7e-90b1-4c3f-8e21-7f0c9a4b5d61".into();
            copy.boot_id = "c10e0000-5b7a-4d8e-a6f1-0b2c3d4e5f60".into();
            let refusal = RefusalObservation {
                node: machine.name.clone(),
                node_uid: observation.uid.clone(),
                check: "name-takeover".into(),
                machine_id: nodeguard::identity::MachineId::parse(&copy.machine_id),
                system_uuid: nodeguard::identity::SystemUuid::parse(&copy.system_uuid),
                provider_id: None,
                boot_id: nodeguard::identity::BootId::parse(&copy.boot_id),
                node_resource_version: observation.resource_version.clone(),
                node_heartbeat: Some(refused_at - SignedDuration::from_mins(4)),
            };
            record.observe_refusal(&refusal, refused_at);
            let mut later = node.clone();
            later["metadata"]["resourceVersion"] = json!("80050");
            let mut written = observe(&later).ok_or("a Node that does not parse")?;
            let seen = refused_at + SignedDuration::from_mins(1);
            written.heartbeat = Some(seen);
            let judging = Judging {
                inventory: &inventory,
                config: &config,
                now: seen,
            };
            record.update(|r| sharing::record_node(r, &written, Evidence::Watch, judging));
        }
        if machine.name == "worker-3" {
            // Boot A, then the copy's boot B, then A again: the conflict.
            let mut copy = kubelet::node_object(&worker3_copy);
            copy["metadata"]["uid"] = nodes[index]["metadata"]["uid"].clone();
            let mut again = node.clone();
            copy["metadata"]["resourceVersion"] = json!("80100");
            again["metadata"]["resourceVersion"] = json!("80101");
            for (step, state) in [(10, &copy), (20, &again)] {
                let observation = observe(state).ok_or("a Node that does not parse")?;
                record.observe_node(
                    &observation,
                    taken - SignedDuration::from_hours(2) + SignedDuration::from_secs(step),
                    Evidence::Confirmed,
                );
            }
        }
        for csr in &csrs {
            if let Some(binding) = binding(csr).filter(|b| *b.node == *machine.name) {
                let name = csr["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                record.observe_key(&KeyObservation { csr: name, binding }, first);
            }
        }
        record.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(first));
        if let Some(entry) = record.entry() {
            inventory.apply_identity(entry);
        }
        records.push(record);
    }
    let mut orphan = NodeIdentity::blank("worker-9");
    if let Some(binding) = binding(&csrs[2]) {
        orphan.observe_key(
            &KeyObservation {
                csr: "csr-p4nzt".into(),
                binding,
            },
            taken - SignedDuration::from_mins(119),
        );
    }
    records.push(orphan);
    for (index, record) in records.into_iter().enumerate() {
        let mut value = serde_json::to_value(&record)?;
        value["metadata"]["uid"] = json!(format!("9d2c4b1a-6e8f-4a3b-b5c7-{index:012x}"));
        value["metadata"]["resourceVersion"] = json!(format!("{}", 92_000 + index));
        value["metadata"]["generation"] = json!(1);
        let name = record.metadata.name.as_deref().unwrap_or_default();
        let made = if name == "worker-9" {
            taken - SignedDuration::from_mins(119)
        } else {
            joined(name)
        };
        value["metadata"]["creationTimestamp"] = json!(made.to_string());
        items.push(value);
    }

    let list = json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": items,
        "metadata": { "resourceVersion": "" },
    });
    println!("{}", serde_json::to_string_pretty(&list)?);
    Ok(())
}
