//! Any bytes as a CSR's `spec.request` (base64 text, PEM, DER) and as a stored CSR's
//! issued certificate: parsed as the webhook and the watchers parse them, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodeguard::identity::csr::CsrDoc;
use nodeguard::identity::{CsrClaim, KeyBinding};

fuzz_target!(|data: &[u8]| {
    let _ = CsrClaim::from_der(data);
    let _ = CsrClaim::from_pem(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = CsrClaim::from_request_field(text);
    }
    // A stored CSR whose request and certificate are these bytes, as the watcher reads it.
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, data);
    let stored = serde_json::json!({
        "metadata": {"name": "csr-fuzz"},
        "spec": {"signerName": "kubernetes.io/kube-apiserver-client-kubelet", "request": encoded},
        "status": {"conditions": [{"type": "Approved", "status": "True"}], "certificate": encoded},
    })
    .to_string();
    if let Ok(doc) = serde_json::from_str::<CsrDoc<'_>>(&stored) {
        let _ = KeyBinding::from_doc(&doc);
    }
});
