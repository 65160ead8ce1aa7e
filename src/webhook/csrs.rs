//! `POST /validate/csrs`: a CertificateSigningRequest CREATE. Only the two kubelet
//! signers make a machine a node; every other CSR passes untouched.

use std::time::Instant;

use axum::extract::{Request as HttpRequest, State};
use axum::response::Response;
use jiff::Timestamp;
use tracing::Span;

use super::review::Request;
use super::{AppState, Subject, Webhook, accept, answer, read_body};
use crate::identity::KubeletSigner;
use crate::identity::csr::CsrDoc;
use crate::policy::{self, CsrReview, KubeletCsr, Verdict};

#[tracing::instrument(
    name = "review",
    level = "debug",
    skip_all,
    fields(webhook = Webhook::Csrs.as_str(), uid, operation, csr, signer, node, dry_run)
)]
pub(super) async fn validate(
    State(state): State<AppState>,
    request: HttpRequest,
) -> Result<Response, Response> {
    let started = Instant::now();
    let body = read_body(request).await;
    let request = accept::<CsrDoc<'_>>(&state, Webhook::Csrs, &body, started)?;
    let span = Span::current();
    span.record("csr", csr_name(&request));

    let review = CsrReview {
        operation: request.operation,
        kubelet: kubelet_csr(&request),
    };
    if let Some(kubelet) = &review.kubelet {
        span.record("signer", kubelet.signer.name());
        if let Ok(claim) = &kubelet.claim {
            span.record("node", &*claim.node);
        }
    }
    let config = state.config.current();
    let verdict = match state.inventory_current() {
        Err(reason) => Verdict::unchecked(reason),
        Ok(()) => state
            .inventory
            .read(|inventory| policy::decide_csr(&review, inventory, &config, Timestamp::now())),
    };
    let node = review
        .kubelet
        .as_ref()
        .and_then(|k| k.claim.as_ref().ok())
        .map_or("", |claim| &*claim.node);
    Ok(answer(
        &state,
        Webhook::Csrs,
        request.dry_run,
        &request.uid,
        Subject {
            name: csr_name(&request),
            node,
        },
        request.operation,
        &verdict,
        started,
    ))
}

/// The CSR's name: generated names are filled in before validating admission runs.
fn csr_name<'r>(request: &'r Request<'_, CsrDoc<'_>>) -> &'r str {
    request
        .object
        .as_ref()
        .and_then(|doc| doc.metadata.as_ref())
        .and_then(|meta| meta.name.as_deref())
        .unwrap_or(&request.name)
}

/// What a CSR under a kubelet signer claims, and who asks; `None` for other signers.
fn kubelet_csr(request: &Request<'_, CsrDoc<'_>>) -> Option<KubeletCsr> {
    let spec = request.object.as_ref()?.spec.as_ref()?;
    let signer = KubeletSigner::from_name(spec.signer_name.as_deref()?)?;
    let request_field = spec.request.as_deref().unwrap_or("");
    // The API server fills spec.username and spec.groups from the requester before
    // admission; the review's userInfo is the same requester, used if they are absent.
    Some(match spec.username.as_deref() {
        Some(username) => KubeletCsr::new(
            signer,
            request_field,
            username,
            spec.groups.iter().flatten().map(|g| g.as_ref()),
        ),
        None => KubeletCsr::new(
            signer,
            request_field,
            &request.user_info.username,
            request.user_info.groups.iter().map(|g| g.as_ref()),
        ),
    })
}
