//! `serving-san`: a kubelet serving certificate names the node's own addresses; an IP
//! SAN that another node reports as its InternalIP would let this machine answer for
//! that node. ExternalIPs are not compared: nodes behind one NAT share them, and the
//! kubelet puts them in its serving certificate too. An address the node itself
//! reports is its own, whoever else holds it too: like the Node checks, this never
//! refuses a value the node already holds.

use super::{Claimed, collision_with, reused_address, running};
use crate::identity::KubeletSigner;
use crate::ledger::ValueField;
use crate::policy::{CheckId, CsrInput, Finding, sharing};

/// Each serving-certificate IP SAN that is another node's InternalIP and not this node's
/// own: refused, or a warning when shared on evidence or its only other holder is not
/// running.
pub fn check(input: &CsrInput<'_>) -> Vec<Finding> {
    if input.signer != KubeletSigner::Serving {
        return Vec::new();
    }
    let node = &input.claim.node;
    let own = input
        .inventory
        .node(node)
        .map(|n| n.internal_ips.as_slice())
        .unwrap_or_default();
    input
        .claim
        .ip_sans
        .iter()
        .filter(|ip| !input.config.address_is_shared(ip))
        .filter(|ip| !own.contains(ip))
        .filter_map(|ip| {
            let holders = input.inventory.internal_ip(ip);
            if let Some(warning) = reused_address(
                CheckId::ServingSan,
                node,
                "serving certificate IP",
                ip,
                holders,
                running(input.inventory, input.config, input.now),
            ) {
                return Some(warning);
            }
            let value = ip.to_string();
            let shared = sharing::evidence(
                ValueField::InternalIP,
                &value,
                node,
                None,
                input.inventory,
                input.config,
            );
            collision_with(
                CheckId::ServingSan,
                Claimed {
                    field: "serving certificate IP",
                    value: &value,
                },
                holders.other_than(node),
                shared.map(sharing::Shared::describe),
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

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::policy::{CheckId, Outcome};
    use crate::sample::{self as kubelet, Requester};

    fn serving_csr(node: &str, ips: &[&str]) -> serde_json::Value {
        let pem = kubelet::csr_pem(&kubelet::kubelet_key().unwrap(), node, ips, &[node]).unwrap();
        kubelet::csr_object(
            "csr-s3rv3",
            kubelet::SERVING_SIGNER,
            &pem,
            &Requester::Node { name: node.into() },
        )
    }

    #[test]
    fn a_serving_csr_for_another_nodes_address_is_denied() {
        let inventory = cluster(&[&worker(1), &worker(2)]);
        let verdict = decide_csr_default(
            &csr_review(&serving_csr("worker-2", &["10.0.0.11"])),
            &inventory,
        );
        assert_eq!(verdict.deciding_check(), Some(CheckId::ServingSan));
        assert_eq!(
            verdict.denial_message().unwrap(),
            "nodeguard [serving-san]: serving certificate IP 10.0.0.11 is already used by node \
             \"worker-1\"; node worker-2 must not serve another node's address: give this machine \
             its own IP (a cloned /etc/machine-id also clones the DHCP lease), or delete node \
             worker-1 if it is gone"
        );
    }

    #[test]
    fn nodes_behind_one_nat_renew_their_serving_certificates_for_the_address_they_share() {
        let a = worker(1);
        let mut b = worker(2);
        b.internal_ip = a.internal_ip.clone();
        let inventory = cluster(&[&a, &b]);
        for node in ["worker-1", "worker-2"] {
            let csr = serving_csr(node, &["10.0.0.11"]);
            assert_eq!(
                decide_csr_default(&csr_review(&csr), &inventory).outcome(),
                Outcome::Allowed,
                "{node}"
            );
        }
        // A third node asking for it does not hold it: refused.
        let csr = serving_csr("worker-3", &["10.0.0.11"]);
        assert_eq!(
            decide_csr_default(&csr_review(&csr), &cluster(&[&a, &b, &worker(3)])).outcome(),
            Outcome::Denied
        );
    }

    #[test]
    fn a_serving_csr_for_its_own_addresses_is_allowed() {
        let inventory = cluster(&[&worker(1), &worker(2)]);
        let csr = serving_csr("worker-2", &["10.0.0.12", "127.0.0.1"]);
        assert_eq!(
            decide_csr_default(&csr_review(&csr), &inventory).outcome(),
            Outcome::Allowed
        );
    }

    #[test]
    fn an_external_ip_shared_behind_nat_is_not_another_nodes_address() {
        let mut object = crate::sample::node_object(&worker(1));
        object["status"]["addresses"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "ExternalIP", "address": "203.0.113.7"}));
        let mut inventory = cluster(&[&worker(2)]);
        inventory.apply_node_as_written(claim_of(&object));
        let csr = serving_csr("worker-2", &["10.0.0.12", "203.0.113.7"]);
        assert_eq!(
            decide_csr_default(&csr_review(&csr), &inventory).outcome(),
            Outcome::Allowed
        );
    }
}
