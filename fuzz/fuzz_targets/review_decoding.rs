//! Any bytes as the body of a review to either endpoint: decoded as the webhook decodes
//! it, never a panic; what decodes is decided.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodeguard::identity::NodeClaim;
use nodeguard::identity::csr::CsrDoc;
use nodeguard::identity::node::NodeDoc;
use nodeguard::inventory::Inventory;
use nodeguard::policy::{self, Config, NodeReview};
use nodeguard::webhook::review;

fuzz_target!(|body: &[u8]| {
    if let Ok(request) = review::decode::<NodeDoc<'_>>(body, &review::NODES) {
        let review = NodeReview::new(
            request.operation,
            request.object.as_ref().and_then(NodeClaim::from_doc),
            request.old_object.as_ref().and_then(NodeClaim::from_doc),
        );
        let verdict = policy::decide_node(
            &review,
            &Inventory::new(),
            &Config::default(),
            jiff::Timestamp::UNIX_EPOCH,
        );
        let _ = verdict.denial_message();
    }
    let _ = review::decode::<CsrDoc<'_>>(body, &review::CSRS);
});
