//! `name-takeover` for CSRs: another machine asking for the client credentials of a
//! node a kubelet is running: a bootstrap token (or another node) requesting a client
//! certificate for that node's name. The node renewing its own certificate is
//! `system:node:<that node>`, whatever its groups (EKS nodes are also in
//! `system:bootstrappers`); a serving certificate is never a bootstrap's (it is asked
//! for by a registered kubelet, for its addresses); and a bootstrap with a key already
//! bound to that node (by a CSR still stored or by the ledger) is the node itself
//! joining again, e.g. after its certificate expired. Once no kubelet is running the
//! node (no status seen written within the heartbeat timeout), a machine may take its name.

use crate::identity::KubeletSigner;
use crate::policy::machine;
use crate::policy::{CheckId, CsrInput, Finding};

/// Refuses client credentials for a running node to a bootstrap or another node, unless
/// the key is already that node's.
pub fn check(input: &CsrInput<'_>) -> Vec<Finding> {
    if input.signer != KubeletSigner::Client || !input.requester.may_be_another_machine() {
        return Vec::new();
    }
    let name = &input.claim.node;
    let key_holders = input.inventory.key(&input.claim.fingerprint);
    if !key_holders.is_empty() && key_holders.other_than(name).count == 0 {
        return Vec::new();
    }
    match input.inventory.node(name) {
        Some(_) if machine::is_running(input.inventory, name, input.config, input.now) => {
            vec![Finding::deny(
                CheckId::NameTakeover,
                format!(
                    "nodeguard [name-takeover]: {} asks for the credentials of node \"{name}\", \
                     which a kubelet on another machine is running; give this machine its own \
                     hostname, or if it replaces {name}, drain and delete node {name} first. If \
                     this machine is {name} itself, it is let through once {name} has had no \
                     status written for {}",
                    input.requester.as_str(),
                    input.config.describe_heartbeat_timeout(),
                ),
                format!(
                    "nodeguard [name-takeover]: client CSR for node \"{name}\", which another machine runs"
                ),
            )]
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::policy::{CheckId, Outcome};
    use crate::sample::{self as kubelet, Machine, Requester};

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
             \"worker-1\", which a kubelet on another machine is running; give this machine its \
             own hostname, or if it replaces worker-1, drain and delete node worker-1 first. If \
             this machine is worker-1 itself, it is let through once worker-1 has had no status \
             written for 10m"
        );
        // Another node asking for worker-1's client credentials is refused the same way.
        let csr = client_csr(
            "worker-1",
            Requester::Node {
                name: "worker-2".into(),
            },
        );
        let verdict = decide_csr_default(&csr_review(&csr), &cluster(&[&worker(1), &worker(2)]));
        assert_eq!(verdict.deciding_check(), Some(CheckId::NameTakeover));
    }

    /// How EKS names a node: `system:node:<name>` in `system:bootstrappers` too.
    fn as_eks_node(mut csr: serde_json::Value, node: &str) -> serde_json::Value {
        csr["spec"]["username"] = format!("system:node:{node}").into();
        csr["spec"]["groups"] = serde_json::json!([
            "system:bootstrappers",
            "system:nodes",
            "system:authenticated"
        ]);
        csr
    }

    #[test]
    fn an_eks_node_rotating_its_serving_and_client_certificates_is_the_node_itself() {
        let inventory = cluster(&[&worker(1), &worker(2)]);
        let key = kubelet::kubelet_key().unwrap();
        let serving = kubelet::csr_pem(&key, "worker-1", &["10.0.0.11"], &["worker-1"]).unwrap();
        let serving = as_eks_node(
            kubelet::csr_object(
                "csr-6plsz",
                kubelet::SERVING_SIGNER,
                &serving,
                &Requester::Bootstrap {
                    token_id: "unused".into(),
                },
            ),
            "worker-1",
        );
        let verdict = decide_csr_default(&csr_review(&serving), &inventory);
        assert_eq!(verdict.outcome(), Outcome::Allowed, "{verdict:?}");
        let client = as_eks_node(
            client_csr(
                "worker-1",
                Requester::Bootstrap {
                    token_id: "unused".into(),
                },
            ),
            "worker-1",
        );
        assert_eq!(
            decide_csr_default(&csr_review(&client), &inventory).outcome(),
            Outcome::Allowed
        );
    }

    #[test]
    fn name_takeover_concerns_client_certificates_only() {
        // A bootstrap never asks for a serving certificate; whoever does is judged by
        // serving-san on its addresses.
        let inventory = cluster(&[&worker(1)]);
        let pem = kubelet::csr_pem(
            &kubelet::kubelet_key().unwrap(),
            "worker-1",
            &["10.0.0.11"],
            &[],
        )
        .unwrap();
        let csr = kubelet::csr_object(
            "csr-s3rv3",
            kubelet::SERVING_SIGNER,
            &pem,
            &Requester::Bootstrap {
                token_id: "07401b".into(),
            },
        );
        assert_eq!(
            decide_csr_default(&csr_review(&csr), &inventory).outcome(),
            Outcome::Allowed
        );
    }

    #[test]
    fn a_bootstrap_for_a_node_whose_kubelet_stopped_writing_status_is_allowed() {
        let mut stale = worker(1);
        stale.heartbeat = now() - jiff::SignedDuration::from_mins(15);
        let csr = client_csr(
            "worker-1",
            Requester::Bootstrap {
                token_id: "07401b".into(),
            },
        );
        assert_eq!(
            decide_csr_default(&csr_review(&csr), &cluster(&[&stale])).outcome(),
            Outcome::Allowed
        );
    }

    #[test]
    fn a_bootstrap_for_a_new_name_or_a_dead_node_and_a_rotation_are_allowed() {
        let mut gone: Machine = worker(2);
        gone.heartbeat = now() - jiff::SignedDuration::from_mins(11);
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
        let mut record = crate::inventory::LedgerEntry::named("worker-1");
        let fingerprint = crate::identity::KeyFingerprint::of_spki_der(
            &rcgen::PublicKeyData::subject_public_key_info(&key),
        );
        record.keys = vec![(fingerprint, crate::identity::KubeletSigner::Client)].into();
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
