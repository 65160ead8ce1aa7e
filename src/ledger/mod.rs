//! The durable identity ledger: one `NodeIdentity` custom resource per node name,
//! holding what must outlive CSR objects and nodeguard's own restarts (key bindings,
//! credential ids, boot history, conflicts) and what every replica must agree on.
//!
//! The record's logic is the core's (`nodeguard_core::ledger`), its resource
//! [`crate::record`]. `recorder` writes what the watchers see, run by the replica that
//! holds the `lease`; `refusals` writes the machines a replica's webhook refused for a
//! name, on every replica; every replica reads the records through a watch (see
//! `watch`).

pub mod forget;
pub mod lease;
pub mod recorder;
pub mod refusals;

pub use crate::record::{
    Boot, BoundKey, Change, Conflict, Evidence, KeyObservation, NodeIdentity, NodeIdentitySpec,
    NodeIdentityStatus, NodeObservation, RefusalObservation,
};
