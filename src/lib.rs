//! nodeguard: a validating admission webhook that keeps node identity unique.
//!
//! The pure core (`identity`, `inventory`, `ledger`'s records, `policy`) is its own crate,
//! `nodeguard-core`, re-exported here; this crate is the I/O shell around it, in layers,
//! each using only those listed before it:
//!
//! - `plumbing`: what knows nothing of nodeguard (HTTPS serving, TLS and its reload,
//!   watching files, the admin server, the metrics registry, a Lease election,
//!   supervision, signals, reaching the API server);
//! - one adapter per cluster concern: `record` (the NodeIdentity resource), `watch` (the
//!   watchers feeding the inventory), `events` (Events), `config` (the configuration in
//!   force), `ledger` (writing the records), `webhook` (AdmissionReview over HTTP);
//! - `metrics`: every part's families in one registry;
//! - `cmd`: each subcommand with its flags and its run, and `cli` the command line.

pub use nodeguard_core::{identity, inventory, policy};

pub mod cli;
pub mod cmd;
pub mod config;
pub mod events;
pub mod ledger;
pub mod metrics;
pub mod plumbing;
pub mod record;
pub mod watch;
pub mod webhook;
