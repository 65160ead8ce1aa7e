//! `serving-san`: a kubelet serving certificate names the node's own addresses; an IP
//! SAN that another node reports would let this machine answer for that node.

use super::{Claimed, collision};
use crate::identity::{KubeletSigner, is_placeholder_ip};
use crate::policy::{CheckId, CsrInput, Finding};

pub fn check(input: &CsrInput<'_>) -> Vec<Finding> {
    if input.signer != KubeletSigner::Serving {
        return Vec::new();
    }
    let node = &input.claim.node;
    input
        .claim
        .ip_sans
        .iter()
        .filter(|ip| !is_placeholder_ip(ip))
        .filter_map(|ip| {
            let internal = input.inventory.internal_ip(ip);
            let holders = if internal.other_than(node).count > 0 {
                internal
            } else {
                input.inventory.external_ip(ip)
            };
            collision(
                CheckId::ServingSan,
                node,
                Claimed { field: "serving certificate IP", value: &ip.to_string() },
                holders,
                |holder| {
                    format!(
                        "node {node} must not serve another node's address: give this machine \
                         its own IP (a cloned /etc/machine-id also clones the DHCP lease), or \
                         delete node {holder} if it is gone"
                    )
                },
            )
        })
        .collect()
}
