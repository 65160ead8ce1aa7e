//! What nodeguard's tests, benchmarks and fuzz targets share, kept out of the binary:
//! the sample machines and what their kubelets send (`kubelet`, the core's `sample`),
//! an in-memory Kubernetes API server for a real `kube::Client` (`fake_api`), and a TLS
//! client that trusts one CA (`tls`).
//!
//! A test kit: it unwraps, as tests do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod fake_api;
pub mod tls;

pub use nodeguard_core::sample as kubelet;
