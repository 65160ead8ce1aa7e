//! nodeguard: a validating admission webhook that keeps node identity unique.
//!
//! A pure core (`identity`, `policy`, `inventory`) inside a thin I/O shell.

pub mod admin;
pub mod audit;
pub mod certs;
pub mod cli;
pub mod demo;
pub mod identity;
pub mod inventory;
pub mod ledger;
pub mod policy;
pub mod serve;
pub mod supervise;
pub mod watch;
pub mod webhook;
