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
