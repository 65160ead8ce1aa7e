//! `key-fingerprint`: a kubelet key belongs to one node. A CSR whose public key is
//! bound to another node comes from a machine carrying that node's credentials.

use crate::policy::verdict::{Collision, CollisionKind};
use crate::policy::{CheckId, CsrInput, Finding};

/// Refuses a CSR whose key is bound to another node.
pub fn check(input: &CsrInput<'_>) -> Vec<Finding> {
    let claim = input.claim;
    let others = input
        .inventory
        .key(&claim.fingerprint)
        .other_than(&claim.node);
    let Some(holder) = others.names.first() else {
        return Vec::new();
    };
    vec![
        Finding::deny(
            CheckId::KeyFingerprint,
            format!(
                "nodeguard [key-fingerprint]: the key of this CSR (SHA-256 {}) is already bound to \
             node \"{holder}\"; this machine carries {holder}'s kubelet credentials: remove \
             /var/lib/kubelet/pki/kubelet-client-* and /etc/kubernetes/kubelet.conf, then \
             re-join with a bootstrap token",
                claim.fingerprint
            ),
            format!(
                "nodeguard [key-fingerprint]: key {}… is already bound to node \"{holder}\"",
                claim.fingerprint.short()
            ),
        )
        .with_collision(Collision {
            field: "kubelet key",
            value: claim.fingerprint.to_string(),
            kind: if others.count == 1 {
                CollisionKind::Clone
            } else {
                CollisionKind::Shared
            },
            holder_count: others.count,
            holders: others.names.iter().map(|n| n.to_string()).collect(),
            shared_by: None,
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::policy::{CheckId, Outcome};
    use crate::sample::{self as kubelet, Requester};

    #[test]
    fn a_key_bound_to_another_node_is_denied_with_its_fingerprint() {
        let key = kubelet::kubelet_key().unwrap();
        let mut inventory = cluster(&[&worker(1)]);
        bind_key(&mut inventory, "csr-abc12", &key, "worker-1");
        let pem = kubelet::csr_pem(&key, "worker-9", &[], &[]).unwrap();
        let csr = kubelet::csr_object(
            "csr-x7k2p",
            kubelet::CLIENT_SIGNER,
            &pem,
            &Requester::Bootstrap {
                token_id: "07401b".into(),
            },
        );
        let verdict = decide_csr_default(&csr_review(&csr), &inventory);
        assert_eq!(verdict.deciding_check(), Some(CheckId::KeyFingerprint));
        let fingerprint = crate::identity::KeyFingerprint::of_spki_der(
            &rcgen::PublicKeyData::subject_public_key_info(&key),
        );
        assert_eq!(
            verdict.denial_message().unwrap(),
            format!(
                "nodeguard [key-fingerprint]: the key of this CSR (SHA-256 {fingerprint}) is \
                 already bound to node \"worker-1\"; this machine carries worker-1's kubelet \
                 credentials: remove /var/lib/kubelet/pki/kubelet-client-* and \
                 /etc/kubernetes/kubelet.conf, then re-join with a bootstrap token"
            )
        );
    }

    #[test]
    fn a_node_renewing_with_its_own_key_and_a_fresh_key_are_allowed() {
        let key = kubelet::kubelet_key().unwrap();
        let mut inventory = cluster(&[&worker(1)]);
        bind_key(&mut inventory, "csr-abc12", &key, "worker-1");
        let own = kubelet::csr_pem(&key, "worker-1", &[], &[]).unwrap();
        let renewal = kubelet::csr_object(
            "csr-r3n3w",
            kubelet::CLIENT_SIGNER,
            &own,
            &Requester::Node {
                name: "worker-1".into(),
            },
        );
        assert_eq!(
            decide_csr_default(&csr_review(&renewal), &inventory).outcome(),
            Outcome::Allowed
        );
        let fresh =
            kubelet::csr_pem(&kubelet::kubelet_key().unwrap(), "worker-9", &[], &[]).unwrap();
        let join = kubelet::csr_object(
            "csr-j01n0",
            kubelet::CLIENT_SIGNER,
            &fresh,
            &Requester::Bootstrap {
                token_id: "07401b".into(),
            },
        );
        assert_eq!(
            decide_csr_default(&csr_review(&join), &inventory).outcome(),
            Outcome::Allowed
        );
    }

    #[test]
    fn a_key_whose_csr_was_denied_binds_nothing() {
        let key = kubelet::kubelet_key().unwrap();
        let pem = kubelet::csr_pem(&key, "worker-1", &[], &[]).unwrap();
        let mut denied = kubelet::csr_object(
            "csr-d3n13",
            kubelet::CLIENT_SIGNER,
            &pem,
            &Requester::Bootstrap {
                token_id: "07401b".into(),
            },
        );
        denied["status"] =
            serde_json::json!({"conditions": [{"type": "Denied", "status": "True"}]});
        let text = denied.to_string();
        let doc: crate::identity::CsrDoc<'_> = serde_json::from_str(&text).unwrap();
        assert_eq!(crate::identity::KeyBinding::from_doc(&doc), None);
    }

    #[test]
    fn other_signers_pass_untouched_even_with_a_bound_key() {
        let key = kubelet::kubelet_key().unwrap();
        let mut inventory = cluster(&[&worker(1)]);
        bind_key(&mut inventory, "csr-abc12", &key, "worker-1");
        let pem = kubelet::csr_pem(&key, "worker-9", &[], &[]).unwrap();
        let csr = kubelet::csr_object(
            "csr-0th3r",
            "example.com/internal-ca",
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
}
