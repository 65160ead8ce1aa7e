//! What was decided, by which check, how fast: labels carry check ids, so a dashboard
//! reads the same words as the denial messages.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::Webhook;
use crate::plumbing::metrics::duration_histogram;
use crate::policy::{Effect, Operation, Verdict};

/// The webhook's reviews, findings and latency.
#[derive(Debug, Clone)]
pub struct AdmissionMetrics {
    requests: Family<RequestLabels, Counter>,
    findings: Family<FindingLabels, Counter>,
    duration: Family<WebhookLabels, Histogram, fn() -> Histogram>,
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

impl AdmissionMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            findings: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
        };
        registry.register(
            "nodeguard_admission_requests",
            "Admission reviews answered, by webhook, operation, result and deciding check",
            metrics.requests.clone(),
        );
        registry.register(
            "nodeguard_admission_findings",
            "Check findings after modes were applied, by check and effect",
            metrics.findings.clone(),
        );
        registry.register(
            "nodeguard_admission_duration_seconds",
            "Time from a complete request body to the response, by webhook",
            metrics.duration.clone(),
        );
        metrics
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
}
