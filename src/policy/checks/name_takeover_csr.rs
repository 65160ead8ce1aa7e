//! `name-takeover` for CSRs: a bootstrap token asking for the credentials of a node that
//! is registered and Ready. A node renewing its own certificate is not a bootstrap.

use crate::policy::{CheckId, CsrInput, Finding};

pub fn check(input: &CsrInput<'_>) -> Vec<Finding> {
    if !input.bootstrap {
        return Vec::new();
    }
    let name = &input.claim.node;
    match input.inventory.node(name) {
        Some(registered) if registered.readiness.ready => vec![Finding::deny(
            CheckId::NameTakeover,
            format!(
                "nodeguard [name-takeover]: a bootstrap token asks for the credentials of node \
                 \"{name}\", which is registered and Ready on another machine; give this machine \
                 its own hostname, or if it replaces {name}, drain and delete node {name} first"
            ),
            format!("nodeguard [name-takeover]: bootstrap CSR for node \"{name}\", which is Ready"),
        )],
        _ => Vec::new(),
    }
}
