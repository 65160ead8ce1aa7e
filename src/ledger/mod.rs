//! The durable identity ledger: one `NodeIdentity` custom resource per node name,
//! holding what must outlive CSR objects and nodeguard's own restarts (key bindings,
//! credential ids, boot history, conflicts) and what every replica must agree on.
//!
//! The record and its pure logic are in [`crate::record`]. `recorder` is the only
//! writer, run by the replica that holds the `lease`; every replica reads the records
//! through a watch (see `watch`).

pub mod forget;
pub mod lease;
pub mod recorder;

pub use crate::record::{
    Boot, BoundKey, Change, Conflict, Evidence, KeyObservation, NodeIdentity, NodeIdentitySpec,
    NodeIdentityStatus, NodeObservation,
};
