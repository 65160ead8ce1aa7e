//! nodeguard's pure core: what a node claims to be (`identity`), what the cluster
//! already holds (`inventory`), what nodeguard has seen over time (`ledger`), and
//! whether a write may go through (`policy`).
//!
//! The history decisions read (`ledger`) is here too: one record per node name, how an
//! observation changes it, and the compact entry every replica keeps of it.
//!
//! Nothing here does I/O, reads the clock or knows a Kubernetes client type: the shell
//! (the `nodeguard` crate) decodes what the API server sends, stores the ledger's
//! records, and passes the time in.

#![deny(missing_docs)]

pub mod check_id;
pub mod identity;
pub mod inventory;
pub mod ledger;
pub mod policy;
#[cfg(any(test, feature = "sample"))]
pub mod sample;
