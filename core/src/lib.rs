//! nodeguard's pure core: what a node claims to be (`identity`), what the cluster
//! already holds (`inventory`), and whether a write may go through (`policy`).
//!
//! Nothing here does I/O, reads the clock or knows a Kubernetes client type: the shell
//! (the `nodeguard` crate) decodes what the API server sends, builds the ledger's view
//! as a plain [`inventory::LedgerEntry`], and passes the time in.

pub mod identity;
pub mod inventory;
pub mod policy;
#[cfg(any(test, feature = "sample"))]
pub mod sample;
