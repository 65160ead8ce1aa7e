//! `name-takeover` for CSRs: a bootstrap token asking for the credentials of a node that
//! is registered and Ready. A node renewing its own certificate is not a bootstrap, and
//! a bootstrap with a key already bound to that node (by a CSR still stored or by the
//! ledger) is the node itself joining again, e.g. after its certificate expired.

use crate::policy::{CheckId, CsrInput, Finding};

pub fn check(input: &CsrInput<'_>) -> Vec<Finding> {
    if !input.bootstrap {
        return Vec::new();
    }
    let name = &input.claim.node;
    let key_holders = input.inventory.key(&input.claim.fingerprint);
    if !key_holders.is_empty() && key_holders.other_than(name).count == 0 {
        return Vec::new();
    }
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

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::demo::kubelet::{self, Machine, Requester};
    use crate::policy::{CheckId, Outcome};

    fn client_csr(node: &str, requester: Requester) -> serde_json::Value {
        let pem = kubelet::csr_pem(&kubelet::kubelet_key().unwrap(), node, &[], &[]).unwrap();
        kubelet::csr_object("csr-b00t5", kubelet::CLIENT_SIGNER, &pem, &requester)
    }

    #[test]
    fn a_bootstrap_csr_for_a_ready_nodes_name_is_denied() {
        let inventory = cluster(&[&worker(1)]);
        let csr = client_csr(
            "worker-1",
            Requester::Bootstrap {
                token_id: "07401b".into(),
            },
        );
        let verdict = decide_csr_default(&csr_review(&csr), &inventory);
        assert_eq!(verdict.deciding_check(), Some(CheckId::NameTakeover));
        assert_eq!(
            verdict.denial_message().unwrap(),
            "nodeguard [name-takeover]: a bootstrap token asks for the credentials of node \
             \"worker-1\", which is registered and Ready on another machine; give this machine \
             its own hostname, or if it replaces worker-1, drain and delete node worker-1 first"
        );
    }

    #[test]
    fn a_bootstrap_for_a_new_name_or_a_dead_node_and_a_rotation_are_allowed() {
        let mut gone: Machine = worker(2);
        gone.ready = false;
        let inventory = cluster(&[&worker(1), &gone]);
        for csr in [
            client_csr(
                "worker-3",
                Requester::Bootstrap {
                    token_id: "07401b".into(),
                },
            ),
            client_csr(
                "worker-2",
                Requester::Bootstrap {
                    token_id: "07401b".into(),
                },
            ),
            client_csr(
                "worker-1",
                Requester::Node {
                    name: "worker-1".into(),
                },
            ),
        ] {
            assert_eq!(
                decide_csr_default(&csr_review(&csr), &inventory).outcome(),
                Outcome::Allowed
            );
        }
    }

    #[test]
    fn a_bootstrap_with_the_key_the_ledger_binds_to_that_node_is_the_node_itself() {
        let key = kubelet::kubelet_key().unwrap();
        let mut inventory = cluster(&[&worker(1)]);
        let mut record = crate::ledger::NodeIdentity::blank("worker-1");
        record.spec.keys.push(crate::ledger::BoundKey {
            fingerprint: crate::identity::KeyFingerprint::of_spki_der(
                &rcgen::PublicKeyData::subject_public_key_info(&key),
            )
            .to_string(),
            signer: kubelet::CLIENT_SIGNER.into(),
            first_seen: now(),
            csr: Some("csr-8x2kq".into()),
        });
        inventory.apply_identity(record);
        let pem = kubelet::csr_pem(&key, "worker-1", &[], &[]).unwrap();
        let own = kubelet::csr_object(
            "csr-r3j01",
            kubelet::CLIENT_SIGNER,
            &pem,
            &Requester::Bootstrap {
                token_id: "07401b".into(),
            },
        );
        assert_eq!(
            decide_csr_default(&csr_review(&own), &inventory).outcome(),
            Outcome::Allowed
        );
    }
}
