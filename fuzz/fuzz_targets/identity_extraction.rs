//! Any JSON as a Node: its identity claim extracted as the webhook and the watchers
//! extract it, indexed, recorded in the ledger as the recorder records it, and decided
//! against an inventory holding both; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodeguard::identity::NodeClaim;
use nodeguard::identity::node::NodeDoc;
use nodeguard::inventory::Inventory;
use nodeguard::policy::sharing::{self, Judging};
use nodeguard::policy::{self, Config, NodeReview, Operation};
use nodeguard::record::{Evidence, NodeObservation, Record, RecordMeta};

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<NodeDoc<'_>>(data) else {
        return;
    };
    let Some(claim) = NodeClaim::from_doc(&doc) else {
        return;
    };
    let config = Config::default();
    let now = jiff::Timestamp::UNIX_EPOCH;
    let mut inventory = Inventory::new();
    inventory.apply_node(claim.clone(), now);
    let mut record = Record::default();
    let judging = Judging {
        inventory: &inventory,
        config: &config,
        now,
    };
    sharing::record_node(&mut record, &NodeObservation::of(&claim), Evidence::Watch, judging);
    let meta = RecordMeta {
        name: &claim.name,
        ..RecordMeta::default()
    };
    if let Some(entry) = record.entry(meta) {
        inventory.apply_identity(entry);
    }
    for operation in [Operation::Create, Operation::Update] {
        let review = NodeReview::new(operation, Some(claim.clone()), Some(claim.clone()));
        let _ = policy::decide_node(&review, &inventory, &config, now).denial_message();
        let _ = policy::decide_node_against(&review, None, &inventory, &config, now).warnings();
    }
    inventory.delete_node(&claim.name);
});
