//! The admin server: `/healthz`, `/readyz` and `/metrics` on a plain-HTTP port of its
//! own, so that probes and scrapes never compete with admission traffic and need no
//! TLS client setup. What they report comes from the caller: readiness and the metrics
//! text are read at request time.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The admin server's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Address of the plain-HTTP admin server (/healthz, /readyz, /metrics).
    #[arg(long, default_value = "[::]:8080")]
    pub admin_listen: SocketAddr,
}

/// Whether the process is ready to serve, with the reason when it is not.
pub type ReadinessCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;
/// The metrics as OpenMetrics text, gathered at scrape time.
pub type MetricsText = Arc<dyn Fn() -> Result<String, std::fmt::Error> + Send + Sync>;

/// What the admin endpoints report on.
#[derive(Clone)]
pub struct AdminState {
    pub readiness: ReadinessCheck,
    pub metrics: MetricsText,
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
    match (state.readiness)() {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    match (state.metrics)() {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            tracing::warn!(%error, "cannot encode metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics").into_response()
        }
    }
}
