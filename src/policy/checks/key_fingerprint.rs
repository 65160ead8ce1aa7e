//! `key-fingerprint`: a kubelet key belongs to one node. A CSR whose public key is
//! bound to another node comes from a machine carrying that node's credentials.

use crate::policy::{CheckId, CsrInput, Finding};

pub fn check(input: &CsrInput<'_>) -> Vec<Finding> {
    let claim = input.claim;
    let others = input.inventory.key(&claim.fingerprint).other_than(&claim.node);
    let Some(holder) = others.names.first() else {
        return Vec::new();
    };
    vec![Finding::deny(
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
    )]
}
