//! `csr-format`: a request under a kubelet signer that is not a kubelet request.

use crate::identity::{CsrError, KubeletSigner};
use crate::policy::{CheckId, Finding};

/// Refuses a request under a kubelet signer that is no kubelet request, naming why.
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
    use crate::policy::{CheckId, Outcome};
    use crate::sample::{self as kubelet, Requester};

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

    /// A CSR whose subject has exactly these attributes, in order. rcgen keeps one
    /// value per attribute type, so a second CN or O goes in under its OID.
    fn csr_with_subject(attributes: &[(rcgen::DnType, &str)]) -> serde_json::Value {
        let mut params = rcgen::CertificateParams::default();
        let mut subject = rcgen::DistinguishedName::new();
        for (kind, value) in attributes {
            subject.push(kind.clone(), *value);
        }
        params.distinguished_name = subject;
        let pem = params
            .serialize_request(&kubelet::kubelet_key().unwrap())
            .unwrap()
            .pem()
            .unwrap();
        kubelet::csr_object(
            "csr-tw0cn",
            kubelet::CLIENT_SIGNER,
            &pem,
            &Requester::Bootstrap {
                token_id: "07401b".into(),
            },
        )
    }

    use rcgen::DnType::{CommonName as CN, OrganizationName as O};

    fn second_cn() -> rcgen::DnType {
        rcgen::DnType::CustomDnType(vec![2, 5, 4, 3])
    }

    fn second_o() -> rcgen::DnType {
        rcgen::DnType::CustomDnType(vec![2, 5, 4, 10])
    }

    #[test]
    fn a_subject_with_two_common_names_is_refused_as_ambiguous() {
        // Kubernetes reads the last CN: judged by the first, this would get worker-1's
        // credentials past every other check.
        let inventory = cluster(&[&worker(1)]);
        let csr = csr_with_subject(&[
            (O, "system:nodes"),
            (CN, "system:node:worker-9"),
            (second_cn(), "system:node:worker-1"),
        ]);
        let verdict = decide_csr_default(&csr_review(&csr), &inventory);
        assert_eq!(verdict.deciding_check(), Some(CheckId::CsrFormat));
        assert_eq!(
            verdict.denial_message().unwrap(),
            "nodeguard [csr-format]: this CSR for signer kubernetes.io/kube-apiserver-client-kubelet \
             is not a kubelet request: the subject has 2 CNs (\"system:node:worker-9\", \
             \"system:node:worker-1\"); Kubernetes reads only the last, so the request is \
             ambiguous; a kubelet sends exactly one; a kubelet asks for CN=system:node:<node \
             name> with a PEM CERTIFICATE REQUEST"
        );
    }

    #[test]
    fn organizations_other_than_exactly_system_nodes_are_refused() {
        let inventory = cluster(&[&worker(1)]);
        for subject in [
            vec![
                (O, "system:nodes"),
                (second_o(), "system:masters"),
                (CN, "system:node:worker-9"),
            ],
            vec![(O, "system:masters"), (CN, "system:node:worker-9")],
            vec![(CN, "system:node:worker-9")],
        ] {
            let verdict = decide_csr_default(&csr_review(&csr_with_subject(&subject)), &inventory);
            assert_eq!(
                verdict.deciding_check(),
                Some(CheckId::CsrFormat),
                "{subject:?}"
            );
            assert!(
                verdict
                    .denial_message()
                    .unwrap()
                    .contains("a kubelet sends exactly O=system:nodes"),
                "{subject:?}"
            );
        }
        // The kubelet's own subject, built the same way, passes.
        let verdict = decide_csr_default(
            &csr_review(&csr_with_subject(&[
                (O, "system:nodes"),
                (CN, "system:node:worker-9"),
            ])),
            &inventory,
        );
        assert_eq!(verdict.outcome(), Outcome::Allowed);
    }

    #[test]
    fn a_request_not_signed_by_its_own_key_is_refused() {
        use base64::Engine;
        let pem = kubelet::csr_pem(&kubelet::kubelet_key().unwrap(), "worker-9", &[], &[]).unwrap();
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let mut der = block.contents;
        // The last byte belongs to the signature.
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        let csr = kubelet::csr_object(
            "csr-t4mp3",
            kubelet::CLIENT_SIGNER,
            &tampered,
            &Requester::Bootstrap {
                token_id: "07401b".into(),
            },
        );
        let verdict = decide_csr_default(&csr_review(&csr), &cluster(&[&worker(1)]));
        assert_eq!(verdict.deciding_check(), Some(CheckId::CsrFormat));
        assert!(
            verdict
                .denial_message()
                .unwrap()
                .contains("the request is not signed by its own key"),
            "{:?}",
            verdict.denial_message()
        );
    }
}
