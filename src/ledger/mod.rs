//! The durable identity ledger: one `NodeIdentity` custom resource per node name,
//! holding what must outlive CSR objects and nodeguard's own restarts (key bindings,
//! credential ids, boot history, conflicts) and what every replica must agree on.
//!
//! The record's logic is the core's (`nodeguard_core::ledger`), its resource
//! [`crate::record`]. `recorder` writes what the watchers see, run by the replica that
//! holds the Lease (`crate::plumbing::lease`); `refusals` writes the machines a replica's webhook refused for a
//! name, on every replica; every replica reads the records through a watch (see
//! `watch`).

pub mod recorder;
pub mod refusals;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::plumbing::metrics::gauge_value;

pub use crate::record::{
    Boot, BoundKey, Change, Conflict, Evidence, KeyObservation, NodeIdentity, NodeIdentitySpec,
    NodeIdentityStatus, NodeObservation, RefusalObservation,
};

/// The outcome of one NodeIdentity write: the `result` of `nodeguard_ledger_writes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteResult {
    /// Written.
    Written,
    /// A stale resourceVersion (409): redone on a fresh read.
    Conflict,
    /// A record no Node claimed, removed.
    Removed,
    /// A refused machine not queued for recording: the queue was full.
    Dropped,
    /// The API server refused or did not answer.
    Failed,
}

impl WriteResult {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            WriteResult::Written => "written",
            WriteResult::Conflict => "conflict",
            WriteResult::Removed => "removed",
            WriteResult::Dropped => "dropped",
            WriteResult::Failed => "failed",
        }
    }
}

/// The ledger's writes, the conflicts recorded, the recorder's lease and its audit.
#[derive(Debug, Clone, Default)]
pub struct LedgerMetrics {
    conflicts_recorded: Family<CheckLabels, Counter>,
    writes: Family<WriteLabels, Counter>,
    leading: Gauge,
    audit_findings: Family<AuditLabels, Gauge>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CheckLabels {
    check: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WriteLabels {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AuditLabels {
    check: String,
    kind: &'static str,
}

impl LedgerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "nodeguard_identity_conflicts_recorded",
            "Conflicts this replica recorded in the ledger, by check",
            metrics.conflicts_recorded.clone(),
        );
        registry.register(
            "nodeguard_ledger_writes",
            "NodeIdentity writes by this replica, by result (written, conflict-retried, failed)",
            metrics.writes.clone(),
        );
        registry.register(
            "nodeguard_recorder_leading",
            "1 while this replica holds the recorder lease, else 0",
            metrics.leading.clone(),
        );
        registry.register(
            "nodeguard_audit_findings",
            "Findings of the last audit of the inventory, by check and kind (clone, shared, reused, conflict, unclaimed, refused)",
            metrics.audit_findings.clone(),
        );
        metrics
    }

    /// A conflict the recorder wrote to the ledger.
    pub fn observe_conflict_recorded(&self, check: &'static str) {
        self.conflicts_recorded
            .get_or_create(&CheckLabels { check })
            .inc();
    }

    /// One NodeIdentity write, and how it went.
    pub fn observe_write(&self, result: WriteResult) {
        self.writes
            .get_or_create(&WriteLabels {
                result: result.as_str(),
            })
            .inc();
    }

    pub fn set_leading(&self, leading: bool) {
        self.leading.set(i64::from(leading));
    }

    /// The findings of the latest audit, replacing the previous ones.
    pub fn set_audit_findings(
        &self,
        counts: impl IntoIterator<Item = (String, &'static str, usize)>,
    ) {
        self.audit_findings.clear();
        for (check, kind, count) in counts {
            self.audit_findings
                .get_or_create(&AuditLabels { check, kind })
                .set(gauge_value(count));
        }
    }
}
