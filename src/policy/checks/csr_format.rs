//! `csr-format`: a request under a kubelet signer that is not a kubelet request.

use crate::identity::{CsrError, KubeletSigner};
use crate::policy::{CheckId, Finding};

pub fn check(signer: KubeletSigner, error: &CsrError) -> Finding {
    Finding::deny(
        CheckId::CsrFormat,
        format!(
            "nodeguard [csr-format]: this CSR for signer {} is not a kubelet request: {error}; \
             a kubelet asks for CN=system:node:<node name> with a PEM CERTIFICATE REQUEST",
            signer.name()
        ),
        format!("nodeguard [csr-format]: not a kubelet request: {error}"),
    )
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::demo::kubelet::{self, Requester};
    use crate::policy::{CheckId, Outcome};

    fn with_request(signer: &str, request: &str) -> serde_json::Value {
        let mut csr = kubelet::csr_object(
            "csr-b4d00",
            signer,
            "",
            &Requester::Node {
                name: "worker-1".into(),
            },
        );
        csr["spec"]["request"] = request.into();
        csr
    }

    #[test]
    fn garbage_under_a_kubelet_signer_is_denied_with_the_reason() {
        let inventory = cluster(&[&worker(1)]);
        let verdict = decide_csr_default(
            &csr_review(&with_request(kubelet::CLIENT_SIGNER, "not base64!")),
            &inventory,
        );
        assert_eq!(verdict.deciding_check(), Some(CheckId::CsrFormat));
        assert_eq!(
            verdict.denial_message().unwrap(),
            "nodeguard [csr-format]: this CSR for signer kubernetes.io/kube-apiserver-client-kubelet \
             is not a kubelet request: spec.request is not base64; a kubelet asks for \
             CN=system:node:<node name> with a PEM CERTIFICATE REQUEST"
        );
    }

    #[test]
    fn a_subject_that_is_not_a_node_is_denied_under_a_kubelet_signer_only() {
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "system:admin");
        let pem = params
            .serialize_request(&kubelet::kubelet_key().unwrap())
            .unwrap()
            .pem()
            .unwrap();
        let inventory = cluster(&[&worker(1)]);
        let csr = kubelet::csr_object(
            "csr-4dm1n",
            kubelet::SERVING_SIGNER,
            &pem,
            &Requester::Node {
                name: "worker-1".into(),
            },
        );
        let verdict = decide_csr_default(&csr_review(&csr), &inventory);
        assert_eq!(verdict.outcome(), Outcome::Denied);
        assert!(
            verdict
                .denial_message()
                .unwrap()
                .contains("subject CN \"system:admin\" is not system:node:<name>")
        );
        let other = kubelet::csr_object(
            "csr-4dm1n",
            "example.com/internal-ca",
            &pem,
            &Requester::Node {
                name: "worker-1".into(),
            },
        );
        assert_eq!(
            decide_csr_default(&csr_review(&other), &inventory).outcome(),
            Outcome::Allowed
        );
    }
}
