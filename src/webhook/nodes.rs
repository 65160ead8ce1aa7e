//! `POST /validate/nodes`: a Node write (CREATE, or UPDATE of the Node or its status).

use std::time::Instant;

use axum::extract::{Request as HttpRequest, State};
use axum::response::Response;
use jiff::Timestamp;
use tracing::Span;

use super::{AppState, Subject, Webhook, accept, answer, read_body};
use crate::identity::NodeClaim;
use crate::identity::node::NodeDoc;
use crate::policy::{self, NodeReview};

#[tracing::instrument(
    name = "review",
    level = "debug",
    skip_all,
    fields(webhook = "nodes", uid, operation, node, subresource, dry_run)
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

    let review = NodeReview {
        operation: request.operation,
        object: request.object.as_ref().and_then(NodeClaim::from_doc),
        old_object: request.old_object.as_ref().and_then(NodeClaim::from_doc),
    };
    let verdict = state
        .inventory
        .read(|inventory| policy::decide_node(&review, inventory, &state.config, Timestamp::now()));
    Ok(answer(
        &state,
        Webhook::Nodes,
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
