//! The Prometheus metrics: what was decided, by which check, how fast, and how much the
//! inventory holds. Labels carry check ids, so a dashboard reads the same words as the
//! denial messages.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::inventory::InventorySize;
use crate::policy::{Effect, Operation, Verdict};

/// Latency buckets, in seconds: the request path aims for well under a millisecond, and
/// anything near a second is already a problem for the kubelet's 10 s budget.
const DURATION_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Which admission endpoint answered: a metrics label and a log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Webhook {
    Nodes,
    Csrs,
    Pods,
}

impl Webhook {
    pub fn as_str(self) -> &'static str {
        match self {
            Webhook::Nodes => "nodes",
            Webhook::Csrs => "csrs",
            Webhook::Pods => "pods",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    webhook: &'static str,
    operation: &'static str,
    result: &'static str,
    check: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FindingLabels {
    check: &'static str,
    effect: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WebhookLabels {
    webhook: &'static str,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Every metric nodeguard exports, registered in its own registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    findings: Family<FindingLabels, Counter>,
    duration: Family<WebhookLabels, Histogram, fn() -> Histogram>,
    inventory_nodes: Gauge,
    inventory_key_bindings: Gauge,
    inventory_ready: Gauge,
    ledger_records: Gauge,
    ledger_conflicts: Gauge,
    second_machines: Gauge,
    conflicts_recorded: Family<FindingCheck, Counter>,
    ledger_writes: Family<WriteLabels, Counter>,
    recorder_leading: Gauge,
    serving_certificate_expiry: Gauge,
    serving_certificate_reloads: Family<ReloadLabels, Counter>,
    config_reloads: Family<ReloadLabels, Counter>,
    config_in_force: Family<ConfigLabels, Gauge>,
    events: Family<EventLabels, Counter>,
    audit_findings: Family<AuditLabels, Gauge>,
    view_age: Family<ViewLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    view_errors: Family<ViewLabels, Gauge>,
    task_restarts: Family<TaskLabels, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TaskLabels {
    task: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ViewLabels {
    view: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConfigLabels {
    sha256: String,
    mode: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EventLabels {
    reason: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AuditLabels {
    check: String,
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

/// The `result` of a serving certificate reload: the new pair is served.
pub const RELOAD_LOADED: &str = "loaded";
/// The `result` of a serving certificate reload: the new files were refused and the
/// previous pair is still served.
pub const RELOAD_REJECTED: &str = "rejected";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FindingCheck {
    check: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WriteLabels {
    result: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let findings = Family::<FindingLabels, Counter>::default();
        let duration: Family<WebhookLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        let inventory_nodes = Gauge::default();
        let inventory_key_bindings = Gauge::default();
        let inventory_ready = Gauge::default();
        let ledger_records = Gauge::default();
        let ledger_conflicts = Gauge::default();
        let second_machines = Gauge::default();
        let conflicts_recorded = Family::<FindingCheck, Counter>::default();
        let ledger_writes = Family::<WriteLabels, Counter>::default();
        let recorder_leading = Gauge::default();
        let serving_certificate_expiry = Gauge::default();
        let serving_certificate_reloads = Family::<ReloadLabels, Counter>::default();
        // Both results exist from the start, so that `rate()` and alerts see a 0.
        for result in [RELOAD_LOADED, RELOAD_REJECTED] {
            let _ = serving_certificate_reloads.get_or_create(&ReloadLabels { result });
        }

        let config_reloads = Family::<ReloadLabels, Counter>::default();
        for result in [RELOAD_LOADED, RELOAD_REJECTED] {
            let _ = config_reloads.get_or_create(&ReloadLabels { result });
        }
        let config_in_force = Family::<ConfigLabels, Gauge>::default();
        let events = Family::<EventLabels, Counter>::default();
        let audit_findings = Family::<AuditLabels, Gauge>::default();
        let view_age = Family::<ViewLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let view_errors = Family::<ViewLabels, Gauge>::default();
        let task_restarts = Family::<TaskLabels, Counter>::default();

        let mut registry = Registry::default();
        registry.register(
            "nodeguard_admission_requests",
            "Admission reviews answered, by webhook, operation, result and deciding check",
            requests.clone(),
        );
        registry.register(
            "nodeguard_admission_findings",
            "Check findings after modes were applied, by check and effect",
            findings.clone(),
        );
        registry.register(
            "nodeguard_admission_duration_seconds",
            "Time from a complete request body to the response, by webhook",
            duration.clone(),
        );
        registry.register(
            "nodeguard_inventory_nodes",
            "Nodes whose identity the inventory holds",
            inventory_nodes.clone(),
        );
        registry.register(
            "nodeguard_inventory_key_bindings",
            "CSRs whose kubelet key the inventory binds to a node",
            inventory_key_bindings.clone(),
        );
        registry.register(
            "nodeguard_inventory_ready",
            "1 while the inventory is known to be current, else 0",
            inventory_ready.clone(),
        );
        registry.register(
            "nodeguard_ledger_records",
            "NodeIdentity records this replica has read",
            ledger_records.clone(),
        );
        registry.register(
            "nodeguard_ledger_conflicts",
            "NodeIdentity records with a conflict (two machines writing one node)",
            ledger_conflicts.clone(),
        );
        registry.register(
            "nodeguard_ledger_second_machines",
            "Machines refused for a node's name and proven to run beside the node's own (a waiting clone)",
            second_machines.clone(),
        );
        registry.register(
            "nodeguard_identity_conflicts_recorded",
            "Conflicts this replica recorded in the ledger, by check",
            conflicts_recorded.clone(),
        );
        registry.register(
            "nodeguard_ledger_writes",
            "NodeIdentity writes by this replica, by result (written, conflict-retried, failed)",
            ledger_writes.clone(),
        );
        registry.register(
            "nodeguard_recorder_leading",
            "1 while this replica holds the recorder lease, else 0",
            recorder_leading.clone(),
        );
        registry.register(
            "nodeguard_serving_certificate_expiry_timestamp_seconds",
            "notAfter of the serving certificate presented to new connections, in Unix seconds",
            serving_certificate_expiry.clone(),
        );
        registry.register(
            "nodeguard_serving_certificate_reloads",
            "Changed serving certificate files seen, by result (loaded, rejected: the previous pair stays)",
            serving_certificate_reloads.clone(),
        );

        registry.register(
            "nodeguard_config_reloads",
            "Changed configuration files seen, by result (loaded, rejected: the previous configuration stays)",
            config_reloads.clone(),
        );
        registry.register(
            "nodeguard_config_info",
            "1 for the configuration in force: the SHA-256 of its file (empty without one) and its global mode",
            config_in_force.clone(),
        );
        registry.register(
            "nodeguard_events",
            "Kubernetes Events about refusals, warnings and findings, by reason and result \
             (posted, updated, coalesced into a series, rate_limited, dropped: queue full, failed)",
            events.clone(),
        );
        registry.register(
            "nodeguard_audit_findings",
            "Findings of the last audit of the inventory, by check and kind (clone, shared, reused, conflict, unclaimed, refused)",
            audit_findings.clone(),
        );

        registry.register(
            "nodeguard_inventory_view_age_seconds",
            "Seconds since the last list or watch data of each view (nodes, CSRs, node identities); -1 before any",
            view_age.clone(),
        );
        registry.register(
            "nodeguard_inventory_view_errors",
            "Failed lists, watches and streams of each view since its last success",
            view_errors.clone(),
        );

        registry.register(
            "nodeguard_task_restarts",
            "Restarts of a task that ended or panicked (the certificate and configuration reloaders)",
            task_restarts.clone(),
        );

        Self {
            registry,
            task_restarts,
            view_age,
            view_errors,
            config_reloads,
            config_in_force,
            events,
            audit_findings,
            requests,
            findings,
            duration,
            inventory_nodes,
            inventory_key_bindings,
            inventory_ready,
            ledger_records,
            ledger_conflicts,
            second_machines,
            conflicts_recorded,
            ledger_writes,
            recorder_leading,
            serving_certificate_expiry,
            serving_certificate_reloads,
        }
    }

    /// The notAfter (Unix seconds) of the serving certificate new connections get: set
    /// at startup and after each reload.
    pub fn set_serving_certificate_expiry(&self, not_after_unix_seconds: i64) {
        self.serving_certificate_expiry.set(not_after_unix_seconds);
    }

    /// One changed pair of serving certificate files: [`RELOAD_LOADED`] or
    /// [`RELOAD_REJECTED`].
    pub fn observe_serving_certificate_reload(&self, result: &'static str) {
        self.serving_certificate_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    /// A supervised task made again after it ended.
    pub fn observe_task_restart(&self, task: &'static str) {
        self.task_restarts.get_or_create(&TaskLabels { task }).inc();
    }

    /// Each view's age and run of errors, at scrape time.
    pub fn set_views(&self, views: &[crate::watch::freshness::ViewStatus]) {
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

    /// One changed configuration file: [`RELOAD_LOADED`] or [`RELOAD_REJECTED`].
    pub fn observe_config_reload(&self, result: &'static str) {
        self.config_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    /// The configuration now in force: its file's SHA-256 (empty for none) and mode.
    pub fn set_config_in_force(&self, sha256: &str, mode: &'static str) {
        self.config_in_force.clear();
        self.config_in_force
            .get_or_create(&ConfigLabels {
                sha256: sha256.to_string(),
                mode,
            })
            .set(1);
    }

    /// One Event nodeguard meant to post: how it went.
    pub fn observe_event(&self, reason: &'static str, result: &'static str) {
        self.events
            .get_or_create(&EventLabels { reason, result })
            .inc();
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

    /// A conflict the recorder wrote to the ledger.
    pub fn observe_conflict_recorded(&self, check: &'static str) {
        self.conflicts_recorded
            .get_or_create(&FindingCheck { check })
            .inc();
    }

    /// One NodeIdentity write: `written`, `conflict` (stale resourceVersion, retried),
    /// `removed` (a record no Node claimed) or `failed`.
    pub fn observe_ledger_write(&self, result: &'static str) {
        self.ledger_writes
            .get_or_create(&WriteLabels { result })
            .inc();
    }

    pub fn set_leading(&self, leading: bool) {
        self.recorder_leading.set(i64::from(leading));
    }

    /// Counts one answered review and its findings.
    pub fn observe_verdict(
        &self,
        webhook: Webhook,
        operation: Operation,
        verdict: &Verdict,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                webhook: webhook.as_str(),
                operation: operation.as_str(),
                result: verdict.outcome().as_str(),
                check: verdict.deciding_check().map_or("", |c| c.as_str()),
            })
            .inc();
        for finding in &verdict.findings {
            self.findings
                .get_or_create(&FindingLabels {
                    check: finding.check.as_str(),
                    effect: match finding.effect {
                        Effect::Deny => "deny",
                        Effect::Warn => "warn",
                    },
                })
                .inc();
        }
        self.observe_duration(webhook, elapsed);
    }

    /// Counts a review that could not be answered (malformed, too large). Its operation
    /// is left empty: a malformed review's operation is not to be trusted.
    pub fn observe_error(&self, webhook: Webhook, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                webhook: webhook.as_str(),
                operation: "",
                result: "error",
                check: "",
            })
            .inc();
        self.observe_duration(webhook, elapsed);
    }

    fn observe_duration(&self, webhook: Webhook, elapsed: Duration) {
        self.duration
            .get_or_create(&WebhookLabels {
                webhook: webhook.as_str(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The inventory as it is now; called at scrape time so the gauges are never stale.
    pub fn set_inventory(&self, size: InventorySize, ready: bool) {
        self.inventory_nodes.set(gauge_value(size.nodes));
        self.inventory_key_bindings
            .set(gauge_value(size.key_bindings));
        self.inventory_ready.set(i64::from(ready));
        self.ledger_records.set(gauge_value(size.ledger_records));
        self.ledger_conflicts
            .set(gauge_value(size.ledger_conflicts));
        self.second_machines.set(gauge_value(size.second_machines));
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

fn gauge_value(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{CheckId, Config, Finding};

    #[test]
    fn a_denial_is_counted_with_its_deciding_check_and_findings() {
        let metrics = Metrics::new();
        let verdict = Verdict::from_findings(
            [Finding::deny(CheckId::MachineId, "m".into(), "w".into())],
            &Config::default(),
        );
        metrics.observe_verdict(
            Webhook::Nodes,
            Operation::Create,
            &verdict,
            Duration::from_micros(300),
        );
        metrics.observe_error(Webhook::Csrs, Duration::from_micros(50));
        metrics.set_inventory(
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
