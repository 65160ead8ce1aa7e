//! nodeguard: a validating admission webhook that keeps node identity unique.
//!
//! The pure core (`identity`, `policy`, `inventory`) is its own crate, `nodeguard-core`,
//! re-exported here; this crate is the I/O shell around it. Its modules form layers,
//! each using only those listed before it: `record` (the NodeIdentity resource),
//! `watch`, `admin`, `webhook`, `certs`, `supervise`, `ledger`, then `serve`, `audit`,
//! `demo` and `cli`.

pub use nodeguard_core::{identity, inventory, policy};

pub mod admin;
pub mod audit;
pub mod certs;
pub mod cli;
pub mod demo;
pub mod ledger;
pub mod record;
pub mod serve;
pub mod supervise;
pub mod watch;
pub mod webhook;
