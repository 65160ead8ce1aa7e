//! `POST /validate/nodes`: a Node write (CREATE, or UPDATE of the Node or its status).

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::Response;
use jiff::Timestamp;
use tracing::Span;

use super::review::{self, NODES};
use super::{AppState, Webhook, answer, bad_request, unreadable_body};
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
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return unreadable_body(&state, Webhook::Nodes, rejection, started),
    };
    let request = match review::decode::<NodeDoc<'_>>(&body, &NODES) {
        Ok(request) => request,
        Err(error) => return bad_request(&state, Webhook::Nodes, &error, started),
    };
    let span = Span::current();
    span.record("uid", &*request.uid);
    span.record("operation", request.operation.as_str());
    span.record("node", &*request.name);
    if !request.sub_resource.is_empty() {
        span.record("subresource", &*request.sub_resource);
    }
    span.record("dry_run", request.dry_run);

    let review = NodeReview {
        operation: request.operation,
        object: request.object.as_ref().and_then(NodeClaim::from_doc),
        old_object: request.old_object.as_ref().and_then(NodeClaim::from_doc),
    };
    let verdict = state
        .inventory
        .read(|inventory| policy::decide_node(&review, inventory, &state.config, Timestamp::now()));
    answer(
        &state,
        Webhook::Nodes,
        &request.uid,
        &request.name,
        request.operation,
        &verdict,
        started,
    )
}
