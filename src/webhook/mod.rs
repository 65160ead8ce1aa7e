//! The admission webhook: AdmissionReview in, Verdict out, over HTTP, nothing else. One
//! request reads as body (`body`) → decode (`review`) → identity claims
//! (`crate::identity`) → decision (`crate::policy`) → answer; the HTTPS server around it
//! is `crate::plumbing::https`.

pub mod body;
pub mod client;
mod csrs;
pub mod endpoints;
pub mod metrics;
mod nodes;
mod pods;
pub mod review;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request as HttpRequest};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};

pub use body::{BodyBudget, BodyError, MAX_BODY_BYTES, ReviewBody};
pub use client::{AdmissionClient, ClientOptions};
pub use endpoints::{Webhook, names};
pub use metrics::AdmissionMetrics;

use crate::config::SharedConfig;
use crate::events::{self, EventQueue, Notice};
use crate::inventory::SharedInventory;
use crate::ledger::refusals::RefusalSender;
use crate::policy::{Effect, Finding, Operation, Verdict};
use review::{ReviewAnswer, ReviewError};

/// The webhook server's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// Address of the HTTPS admission endpoint. `[::]` listens on IPv6 and IPv4 both
    /// (IPv4 only where the kernel has no IPv6).
    #[arg(long, default_value = "[::]:8443")]
    pub listen: SocketAddr,
    /// PEM file holding the serving certificate chain, leaf first.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: PathBuf,
    /// PEM file holding the serving certificate's private key (PKCS#8, SEC1 or PKCS#1).
    #[arg(long, value_name = "FILE")]
    pub tls_key: PathBuf,
}

/// What every request reads.
#[derive(Debug, Clone)]
pub struct AppState {
    pub inventory: SharedInventory,
    /// Swapped whole on reload; each request reads it once.
    pub config: SharedConfig,
    pub metrics: AdmissionMetrics,
    /// Where refusals and warnings go as Events, after the answer; none in tests that
    /// post nothing.
    pub events: Option<EventQueue>,
    /// Whether the inventory is current; without it (tests, the demo) it always is.
    pub readiness: Option<crate::watch::Readiness>,
    /// Where machines refused for a node's name go, to be recorded in the ledger after
    /// the answer; none in tests that record nothing.
    pub refusals: Option<RefusalSender>,
}

impl AppState {
    /// `Err` with the reason when decisions cannot be made on the inventory now.
    fn inventory_current(&self) -> Result<(), String> {
        self.readiness
            .as_ref()
            .map_or(Ok(()), crate::watch::Readiness::current)
    }
}

/// What the endpoint reviews.
fn reviewed(webhook: Webhook) -> &'static review::Reviewed {
    match webhook {
        Webhook::Nodes => &review::NODES,
        Webhook::Csrs => &review::CSRS,
        Webhook::Pods => &review::PODS,
    }
}

/// The admission endpoints. Unknown paths answer 404 and other methods 405.
pub fn router(state: AppState) -> Router {
    router_with_budget(state, BodyBudget::default())
}

/// The endpoints, reading bodies within `budget`.
pub fn router_with_budget(state: AppState, budget: BodyBudget) -> Router {
    Router::new()
        .route(Webhook::Nodes.path(), post(nodes::validate))
        .route(Webhook::Csrs.path(), post(csrs::validate))
        .route(Webhook::Pods.path(), post(pods::validate))
        // The body is read by `body::read`, within the budget, not by axum's limit.
        .layer(DefaultBodyLimit::disable())
        .layer(Extension(budget))
        .with_state(state)
}

/// Reads the request's body within the router's budget.
async fn read_body(request: HttpRequest) -> Result<ReviewBody, BodyError> {
    let (parts, body) = request.into_parts();
    let budget = parts
        .extensions
        .get::<BodyBudget>()
        .cloned()
        .unwrap_or_default();
    body::read(&parts.headers, body, &budget).await
}

/// The request body as a review for `webhook`, recorded in the request's span; or the
/// answer refusing it (400 for a body that is not JSON or not a review it serves, 413
/// for one larger than any review).
// The error is the finished response, built once and returned as is: nothing to shrink.
#[allow(clippy::result_large_err)]
fn accept<'b, O: serde::Deserialize<'b> + review::Typed>(
    state: &AppState,
    webhook: Webhook,
    body: &'b Result<ReviewBody, BodyError>,
    started: Instant,
) -> Result<review::Request<'b, O>, Response> {
    let body = match body {
        Ok(body) => &body.bytes,
        Err(error) => return Err(unreadable_body(state, webhook, error, started)),
    };
    let request = review::decode::<O>(body, reviewed(webhook))
        .map_err(|error| bad_request(state, webhook, &error, started))?;
    let span = tracing::Span::current();
    span.record("uid", &*request.uid);
    span.record("operation", request.operation.as_str());
    span.record("dry_run", request.dry_run);
    Ok(request)
}

/// What a review is about, for its log line: the object's name and the node it concerns
/// (the Node itself, or the node a kubelet CSR asks credentials for; empty if unknown).
#[derive(Debug, Clone, Copy)]
struct Subject<'a> {
    name: &'a str,
    node: &'a str,
}

/// Sends the verdict on review `uid`, logs it, counts it, and queues its Events and the
/// machines it refuses for a node's name (never for a dry run: the webhooks declare
/// `sideEffects: NoneOnDryRun`).
#[allow(clippy::too_many_arguments)]
fn answer(
    state: &AppState,
    webhook: Webhook,
    dry_run: bool,
    uid: &str,
    subject: Subject<'_>,
    operation: Operation,
    verdict: &Verdict,
    started: Instant,
) -> Response {
    log_verdict(webhook, uid, subject, operation, verdict);
    state
        .metrics
        .observe_verdict(webhook, operation, verdict, started.elapsed());
    let refusal = review::Refusal::of(reviewed(webhook), operation);
    let response = axum::Json(ReviewAnswer::refusing_as(uid, verdict, refusal)).into_response();
    if !dry_run && let Some(queue) = &state.events {
        for notice in notices(state, webhook, subject, verdict) {
            queue.post(notice);
        }
    }
    if !dry_run && let Some(refusals) = &state.refusals {
        for refusal in verdict.refusals() {
            refusals.offer(refusal.clone());
        }
    }
    response
}

/// One Event per finding, about the Node (or the CSR, when its node does not exist).
fn notices(
    state: &AppState,
    webhook: Webhook,
    subject: Subject<'_>,
    verdict: &Verdict,
) -> Vec<Notice> {
    if verdict.findings.is_empty() {
        return Vec::new();
    }
    let regarding = state.inventory.read(|inventory| {
        let node = (!subject.node.is_empty())
            .then(|| inventory.node(subject.node))
            .flatten();
        match (webhook, node) {
            (_, Some(node)) => events::node_reference(&node.name, node.uid.as_deref()),
            (Webhook::Nodes | Webhook::Pods, None) => events::node_reference(subject.node, None),
            (Webhook::Csrs, None) => events::csr_reference(subject.name),
        }
    });
    verdict
        .findings
        .iter()
        .map(|finding| {
            let mut notice = notice_of(finding, regarding.clone());
            // On the Node, related to the pod: one series per pod, apart from the
            // refusals of the node's own writes.
            if webhook == Webhook::Pods {
                notice.related = Some(events::pod_reference(subject.name));
            }
            notice
        })
        .collect()
}

/// The notice of one finding about `regarding`.
pub fn notice_of(
    finding: &Finding,
    regarding: k8s_openapi::api::core::v1::ObjectReference,
) -> Notice {
    Notice {
        regarding,
        related: finding
            .collision
            .as_ref()
            .and_then(|c| c.holders.first())
            .map(|holder| events::node_reference(holder, None)),
        reason: events::reason_of(finding.check),
        action: match finding.effect {
            Effect::Deny => "Denied",
            Effect::Warn => "Warned",
        },
        check: finding.check.as_str(),
        note: finding.message.clone(),
    }
}

/// One line per denial and per warning, at info: each is something a person may have
/// to act on, so each line carries the uid, webhook, operation, object name and node
/// itself (the per-request span is debug-level: it costs nothing unless asked for).
fn log_verdict(
    webhook: Webhook,
    uid: &str,
    Subject { name, node }: Subject<'_>,
    operation: Operation,
    verdict: &Verdict,
) {
    if let Some(message) = verdict.denial_message() {
        let checks: Vec<&str> = verdict
            .findings
            .iter()
            .filter(|f| f.effect == Effect::Deny)
            .map(|f| f.check.as_str())
            .collect();
        tracing::info!(
            webhook = webhook.as_str(),
            uid,
            operation = operation.as_str(),
            name,
            node,
            checks = %checks.join(","),
            reason = %message,
            "denied"
        );
        return;
    }
    let warnings: Vec<_> = verdict
        .findings
        .iter()
        .filter(|f| f.effect == Effect::Warn)
        .collect();
    if warnings.is_empty() {
        tracing::debug!("allowed");
    }
    for finding in warnings {
        tracing::info!(
            webhook = webhook.as_str(),
            uid,
            operation = operation.as_str(),
            name,
            node,
            check = %finding.check,
            warning = %finding.warning,
            "warned"
        );
    }
}

/// A review that cannot be answered: 400 with the reason as one line of text.
fn bad_request(
    state: &AppState,
    webhook: Webhook,
    error: &ReviewError,
    started: Instant,
) -> Response {
    tracing::info!(%error, "malformed review");
    state.metrics.observe_error(webhook, started.elapsed());
    (StatusCode::BAD_REQUEST, error.to_string()).into_response()
}

/// A body that was not read: not JSON, cut off (400), or too large (413).
fn unreadable_body(
    state: &AppState,
    webhook: Webhook,
    error: &BodyError,
    started: Instant,
) -> Response {
    let status = error.status();
    tracing::info!(%status, reason = %error, "unreadable request body");
    state.metrics.observe_error(webhook, started.elapsed());
    (status, error.to_string()).into_response()
}
