//! `POST /validate/nodes`: a Node write (CREATE, or UPDATE of the Node or its status).

use std::time::Instant;

use axum::extract::{Request as HttpRequest, State};
use axum::response::Response;
use jiff::Timestamp;
use tracing::Span;

use super::{AppState, Subject, Webhook, accept, answer, read_body};
use crate::identity::NodeClaim;
use crate::identity::node::NodeDoc;
use crate::policy::{self, NodeReview, Verdict};

#[tracing::instrument(
    name = "review",
    level = "debug",
    skip_all,
    fields(webhook = Webhook::Nodes.as_str(), uid, operation, node, subresource, dry_run)
)]
pub(super) async fn validate(
    State(state): State<AppState>,
    request: HttpRequest,
) -> Result<Response, Response> {
    let started = Instant::now();
    let body = read_body(request).await;
    let request = accept::<NodeDoc<'_>>(&state, Webhook::Nodes, &body, started)?;
    let span = Span::current();
    span.record("node", &*request.name);
    if !request.sub_resource.is_empty() {
        span.record("subresource", &*request.sub_resource);
    }

    let config = state.config.current();
    let mut review = NodeReview::new(
        request.operation,
        request.object.as_ref().and_then(NodeClaim::from_doc),
        request.old_object.as_ref().and_then(NodeClaim::from_doc),
    );
    if config.exempts_by_label() {
        review.labels = labels_of(request.object.as_ref());
    }
    let verdict = match state.inventory_current() {
        Err(reason) => Verdict::unchecked(reason),
        Ok(()) => state
            .inventory
            .read(|inventory| policy::decide_node(&review, inventory, &config, Timestamp::now())),
    };
    Ok(answer(
        &state,
        Webhook::Nodes,
        request.dry_run,
        &request.uid,
        Subject {
            name: &request.name,
            node: &request.name,
        },
        request.operation,
        &verdict,
        started,
    ))
}

/// Every label of the written Node, for an exemption's selector.
fn labels_of(doc: Option<&NodeDoc<'_>>) -> Vec<(String, String)> {
    doc.and_then(|doc| doc.metadata.as_ref())
        .and_then(|meta| meta.labels.as_ref())
        .map(|labels| {
            labels
                .pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}
