//! The admin server: `/healthz`, `/readyz` and `/metrics` on a plain-HTTP port of its
//! own, so that probes and scrapes never compete with admission traffic and need no
//! TLS client setup.

pub mod events;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub use metrics::Metrics;

use crate::inventory::SharedInventory;
use crate::watch::Readiness;

/// The admin server's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Address of the plain-HTTP admin server (/healthz, /readyz, /metrics).
    #[arg(long, default_value = "[::]:8080")]
    pub admin_listen: SocketAddr,
}

/// What the admin endpoints report on.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub inventory: SharedInventory,
    pub readiness: Readiness,
    pub metrics: Arc<Metrics>,
}

const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves the admin endpoints until `shutdown` resolves, then lets open requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// Alive as long as the process answers at all.
async fn healthz() -> &'static str {
    "ok"
}

/// Ready while the inventory is synced and current: a replica that has not synced, or
/// whose view of the cluster has gone stale, would decide on values that may not exist
/// anymore. Unready for good once shutdown starts, so that the Service stops routing here
/// while the webhook still answers.
async fn readyz(State(state): State<AdminState>) -> Response {
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let size = state.inventory.read(|inventory| inventory.size());
    state
        .metrics
        .set_inventory(size, state.readiness.current().is_ok());
    if let Some(views) = state.readiness.views() {
        state
            .metrics
            .set_views(&views.status(std::time::Instant::now()));
    }
    match state.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            tracing::warn!(%error, "cannot encode metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics").into_response()
        }
    }
}
