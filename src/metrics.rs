//! Every metric nodeguard exports, in one registry: each part registers its own families
//! (the webhook's reviews, the inventory, the ledger, Events, the configuration, the
//! serving certificate, supervised tasks) and is handed its own handle.

use std::sync::Arc;

use crate::config::ConfigMetrics;
use crate::events::EventMetrics;
use crate::inventory::SharedInventory;
use crate::ledger::LedgerMetrics;
use crate::plumbing::admin::AdminState;
use crate::plumbing::certificate_reload::CertificateMetrics;
use crate::plumbing::metrics::{Registry, encode};
use crate::plumbing::supervise::TaskMetrics;
use crate::watch::Readiness;
use crate::watch::metrics::InventoryMetrics;
use crate::webhook::AdmissionMetrics;

/// Every part's metric families, registered in one registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub admission: AdmissionMetrics,
    pub inventory: InventoryMetrics,
    pub ledger: LedgerMetrics,
    pub certificate: CertificateMetrics,
    pub config: ConfigMetrics,
    pub events: EventMetrics,
    pub tasks: TaskMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let admission = AdmissionMetrics::register(&mut registry);
        let inventory = InventoryMetrics::register(&mut registry);
        let ledger = LedgerMetrics::register(&mut registry);
        let certificate = CertificateMetrics::register(&mut registry);
        let config = ConfigMetrics::register(&mut registry);
        let events = EventMetrics::register(&mut registry);
        let tasks = TaskMetrics::register(&mut registry);
        Self {
            registry,
            admission,
            inventory,
            ledger,
            certificate,
            config,
            events,
            tasks,
        }
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        encode(&self.registry)
    }

    /// What the admin server reports: the readiness of `readiness`, and these metrics
    /// with the inventory's gauges read at each scrape.
    pub fn admin_state(
        self: &Arc<Self>,
        inventory: SharedInventory,
        readiness: Readiness,
    ) -> AdminState {
        let metrics = Arc::clone(self);
        let scraped = readiness.clone();
        AdminState {
            readiness: Arc::new(move || readiness.check()),
            metrics: Arc::new(move || {
                metrics.inventory.refresh(&inventory, &scraped);
                metrics.encode()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::inventory::InventorySize;
    use crate::policy::{CheckId, Config, Finding, Operation, Verdict};
    use crate::webhook::Webhook;

    #[test]
    fn a_denial_is_counted_with_its_deciding_check_and_findings() {
        let metrics = Metrics::new();
        let verdict = Verdict::from_findings(
            [Finding::deny(CheckId::MachineId, "m".into(), "w".into())],
            &Config::default(),
        );
        metrics.admission.observe_verdict(
            Webhook::Nodes,
            Operation::Create,
            &verdict,
            Duration::from_micros(300),
        );
        metrics
            .admission
            .observe_error(Webhook::Csrs, Duration::from_micros(50));
        metrics.inventory.set_inventory(
            InventorySize {
                nodes: 3,
                key_bindings: 2,
                indexed_values: 10,
                ledger_records: 4,
                ledger_conflicts: 1,
                second_machines: 2,
            },
            true,
        );
        let text = metrics.encode().unwrap();
        for line in [
            "nodeguard_admission_requests_total{webhook=\"nodes\",operation=\"CREATE\",result=\"denied\",check=\"machine-id\"} 1",
            "nodeguard_admission_requests_total{webhook=\"csrs\",operation=\"\",result=\"error\",check=\"\"} 1",
            "nodeguard_admission_findings_total{check=\"machine-id\",effect=\"deny\"} 1",
            "nodeguard_admission_duration_seconds_bucket{le=\"0.0005\",webhook=\"nodes\"} 1",
            "nodeguard_admission_duration_seconds_bucket{le=\"0.00025\",webhook=\"nodes\"} 0",
            "nodeguard_inventory_nodes 3",
            "nodeguard_inventory_key_bindings 2",
            "nodeguard_inventory_ready 1",
            "nodeguard_ledger_records 4",
            "nodeguard_ledger_conflicts 1",
            "nodeguard_ledger_second_machines 2",
            "nodeguard_serving_certificate_expiry_timestamp_seconds 0",
            "nodeguard_serving_certificate_reloads_total{result=\"loaded\"} 0",
            "nodeguard_serving_certificate_reloads_total{result=\"rejected\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }
}
