//! Any JSON as a Node: its identity claim extracted as the webhook and the watchers
//! extract it, indexed, and decided against an inventory holding it; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodeguard::identity::NodeClaim;
use nodeguard::identity::node::NodeDoc;
use nodeguard::inventory::Inventory;
use nodeguard::policy::{self, Config, NodeReview, Operation};

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<NodeDoc<'_>>(data) else {
        return;
    };
    let Some(claim) = NodeClaim::from_doc(&doc) else {
        return;
    };
    let mut inventory = Inventory::new();
    inventory.apply_node(claim.clone());
    let config = Config::default();
    let now = jiff::Timestamp::UNIX_EPOCH;
    for operation in [Operation::Create, Operation::Update] {
        let review = NodeReview::new(operation, Some(claim.clone()), Some(claim.clone()));
        let _ = policy::decide_node(&review, &inventory, &config, now).denial_message();
        let _ = policy::decide_node_against(&review, None, &inventory, &config, now).warnings();
    }
    inventory.delete_node(&claim.name);
});
