//! What the inventory holds and how current each view is, read at scrape time so the
//! gauges are never stale.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Readiness;
use super::freshness::ViewStatus;
use crate::inventory::{InventorySize, SharedInventory};
use crate::plumbing::metrics::gauge_value;

/// The inventory's gauges, the ledger entries it holds among them.
#[derive(Debug, Clone, Default)]
pub struct InventoryMetrics {
    nodes: Gauge,
    key_bindings: Gauge,
    ready: Gauge,
    ledger_records: Gauge,
    ledger_conflicts: Gauge,
    second_machines: Gauge,
    view_age: Family<ViewLabels, Gauge<f64, AtomicU64>>,
    view_errors: Family<ViewLabels, Gauge>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ViewLabels {
    view: &'static str,
}

impl InventoryMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "nodeguard_inventory_nodes",
            "Nodes whose identity the inventory holds",
            metrics.nodes.clone(),
        );
        registry.register(
            "nodeguard_inventory_key_bindings",
            "CSRs whose kubelet key the inventory binds to a node",
            metrics.key_bindings.clone(),
        );
        registry.register(
            "nodeguard_inventory_ready",
            "1 while the inventory is known to be current, else 0",
            metrics.ready.clone(),
        );
        registry.register(
            "nodeguard_ledger_records",
            "NodeIdentity records this replica has read",
            metrics.ledger_records.clone(),
        );
        registry.register(
            "nodeguard_ledger_conflicts",
            "NodeIdentity records with a conflict (two machines writing one node)",
            metrics.ledger_conflicts.clone(),
        );
        registry.register(
            "nodeguard_ledger_second_machines",
            "Machines refused for a node's name and proven to run beside the node's own (a waiting clone)",
            metrics.second_machines.clone(),
        );
        registry.register(
            "nodeguard_inventory_view_age_seconds",
            "Seconds since the last list or watch data of each view (nodes, CSRs, node identities); -1 before any",
            metrics.view_age.clone(),
        );
        registry.register(
            "nodeguard_inventory_view_errors",
            "Failed lists, watches and streams of each view since its last success",
            metrics.view_errors.clone(),
        );
        metrics
    }

    /// Sets every gauge from the inventory and readiness as they are now.
    pub fn refresh(&self, inventory: &SharedInventory, readiness: &Readiness) {
        let size = inventory.read(|inventory| inventory.size());
        self.set_inventory(size, readiness.current().is_ok());
        if let Some(views) = readiness.views() {
            self.set_views(&views.status(std::time::Instant::now()));
        }
    }

    /// The inventory as it is now.
    pub fn set_inventory(&self, size: InventorySize, ready: bool) {
        self.nodes.set(gauge_value(size.nodes));
        self.key_bindings.set(gauge_value(size.key_bindings));
        self.ready.set(i64::from(ready));
        self.ledger_records.set(gauge_value(size.ledger_records));
        self.ledger_conflicts
            .set(gauge_value(size.ledger_conflicts));
        self.second_machines.set(gauge_value(size.second_machines));
    }

    /// Each view's age and run of errors.
    pub fn set_views(&self, views: &[ViewStatus]) {
        for status in views {
            let labels = ViewLabels {
                view: status.view.as_str(),
            };
            self.view_age
                .get_or_create(&labels)
                .set(status.age.map_or(-1.0, |age| age.as_secs_f64()));
            self.view_errors
                .get_or_create(&labels)
                .set(i64::from(status.errors));
        }
    }
}
