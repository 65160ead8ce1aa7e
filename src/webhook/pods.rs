//! `POST /validate/pods`: a kubelet's write of a pod's status. Judged only when the
//! ledger records another machine writing as the pod's node (`policy::pods`); every
//! other write is allowed without a look.

use std::time::Instant;

use axum::extract::{Request as HttpRequest, State};
use axum::response::Response;
use jiff::Timestamp;
use tracing::Span;

use super::{AppState, Subject, Webhook, accept, answer, read_body};
use crate::identity::pod::{PodDoc, PodRuntime};
use crate::policy::pods::{PodStatusReview, decide_pod_status};
use crate::policy::{Operation, Verdict};

#[tracing::instrument(
    name = "review",
    level = "debug",
    skip_all,
    fields(webhook = Webhook::Pods.as_str(), uid, operation, node, pod, dry_run)
)]
pub(super) async fn validate(
    State(state): State<AppState>,
    request: HttpRequest,
) -> Result<Response, Response> {
    let started = Instant::now();
    let body = read_body(request).await;
    let request = accept::<PodDoc>(&state, Webhook::Pods, &body, started)?;
    let doc = request.old_object.as_ref().or(request.object.as_ref());
    let node = doc.map_or("", |d| d.spec.node_name.as_str());
    let pod = doc.map_or_else(String::new, |d| {
        format!("{}/{}", d.metadata.namespace, d.metadata.name)
    });
    let span = Span::current();
    span.record("node", node);
    span.record("pod", &*pod);

    let verdict = match (&request.old_object, &request.object) {
        (Some(old), Some(new))
            if request.operation == Operation::Update
                && request.sub_resource == "status"
                && written_by(&request.user_info.username, node) =>
        {
            judge(&state, node, &pod, old, new)
        }
        _ => Verdict::default(),
    };
    Ok(answer(
        &state,
        Webhook::Pods,
        request.dry_run,
        &request.uid,
        Subject { name: &pod, node },
        request.operation,
        &verdict,
        started,
    ))
}

/// Whether `user` is the kubelet of `node`: only a node's own writes are judged.
fn written_by(user: &str, node: &str) -> bool {
    !node.is_empty() && user.strip_prefix("system:node:") == Some(node)
}

fn judge(state: &AppState, node: &str, pod: &str, old: &PodDoc, new: &PodDoc) -> Verdict {
    let now = Timestamp::now();
    let config = state.config.current();
    state.inventory.read(|inventory| {
        // Most pod writes reaching here are of nodes nothing guards: nothing more is read.
        let record = inventory.identity(node);
        if record.and_then(|r| r.pod_guard(now)).is_none() {
            return Verdict::default();
        }
        if let Err(reason) = state.inventory_current() {
            return Verdict::unchecked(reason);
        }
        let (stored, written) = match (
            PodRuntime::from_status(&old.status),
            PodRuntime::from_status(&new.status),
        ) {
            (Ok(stored), Ok(written)) => (stored, written),
            // The API server validated both; a status nodeguard cannot read is never a
            // reason to refuse a node's write.
            (Err(error), _) | (_, Err(error)) => {
                tracing::info!(node, pod, %error, "pod status not read; allowed");
                return Verdict::default();
            }
        };
        let review = PodStatusReview {
            node: node.to_string(),
            pod: pod.to_string(),
            stored,
            written,
            stored_at: old.status_changed_at(),
            deleting: old.metadata.deletion_timestamp.is_some(),
        };
        decide_pod_status(&review, record, &config, now)
    })
}
