//! `nodeguard demo`: starts the real HTTPS server on localhost with a freshly generated
//! CA, then replays the clone scenarios as the API server would send them and prints
//! what the kubelet on each machine would log. Needs no cluster.

pub use nodeguard_core::sample as kubelet;
pub mod kubelet_log;
pub mod scenarios;

use std::sync::Arc;

use anyhow::Context;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::config::SharedConfig;
use crate::inventory::SharedInventory;
use crate::ledger::refusals::RefusalSender;
use crate::metrics::Metrics;
use crate::plumbing::dev_pki;
use crate::plumbing::https::serve_tls;
use crate::policy::{Config, Outcome};
use crate::webhook::client::AdmissionClient;
use crate::webhook::{AppState, Webhook, names, router};
use kubelet_log::Answer;
use scenarios::{KubeletAction, Scenario};

/// The name the API server verifies the webhook's certificate against.
pub use crate::plumbing::dev_pki::DEV_SERVER_NAME as SERVICE_DNS_NAME;

fn outcome_of(answer: &Answer) -> Outcome {
    if !answer.allowed {
        Outcome::Denied
    } else if answer.warnings.is_empty() {
        Outcome::Allowed
    } else {
        Outcome::Warned
    }
}

fn webhook_name(scenario: &Scenario) -> &'static str {
    match (scenario.action, scenario.endpoint) {
        (KubeletAction::UpdateStatus, _) => names::NODE_UPDATES,
        (_, Webhook::Nodes) => names::NODE_REGISTRATIONS,
        (_, Webhook::Csrs) => names::KUBELET_CSRS,
        (_, Webhook::Pods) => names::POD_STATUS,
    }
}

fn describe_request(review: &Value) -> String {
    let request = &review["request"];
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    let mut kind = text(&request["kind"]["kind"]);
    if let Some(sub) = request["subResource"].as_str() {
        kind = format!("{kind}/{sub}");
    }
    format!(
        "{} {kind} {} by {}",
        text(&request["operation"]),
        text(&request["name"]),
        text(&request["userInfo"]["username"])
    )
}

/// The real webhook server on a loopback port, with a CA made for it and a client that
/// verifies it as the API server does. The demo and the tests talk to it.
pub struct LocalWebhook {
    pub address: std::net::SocketAddr,
    pub inventory: SharedInventory,
    pub metrics: Arc<Metrics>,
    pub ca_pem: String,
    client: AdmissionClient,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl LocalWebhook {
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        Self::start_recording(config, None).await
    }

    /// The webhook handing the machines it refuses for a name to `refusals`, as `serve`
    /// hands them to its ledger writer.
    pub async fn start_recording(
        config: Config,
        refusals: Option<RefusalSender>,
    ) -> anyhow::Result<Self> {
        let pki = dev_pki::generate_dev_pki(&[SERVICE_DNS_NAME]).context("cannot generate a CA")?;
        let tls_config = pki.server_config()?;
        let inventory = SharedInventory::default();
        let metrics = Arc::new(Metrics::new());
        let state = AppState {
            inventory: inventory.clone(),
            config: SharedConfig::new(config),
            events: None,
            readiness: None,
            refusals,
            metrics: metrics.admission.clone(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_tls(listener, tls_config, router(state), async {
            let _ = stopped.await;
        }));
        let client = AdmissionClient::new(address, pki.ca_pem.as_bytes(), SERVICE_DNS_NAME)?;
        Ok(Self {
            address,
            inventory,
            metrics,
            ca_pem: pki.ca_pem,
            client,
            stop,
            server,
        })
    }

    /// POSTs an AdmissionReview and returns the HTTP status and the parsed answer.
    pub async fn ask(
        &self,
        endpoint: Webhook,
        review: &Value,
    ) -> anyhow::Result<(http::StatusCode, Value)> {
        let (status, body) = self
            .client
            .post(endpoint.path(), serde_json::to_vec(review)?)
            .await?;
        let answer = serde_json::from_slice(&body)
            .with_context(|| format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))?;
        Ok((status, answer))
    }

    /// Stops accepting, drains, and returns the server's own result.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.server.await?
    }
}

/// Runs the demo; fails if any scenario is answered otherwise than expected.
pub async fn run() -> anyhow::Result<()> {
    let scenarios = scenarios::all().context("cannot generate the scenarios' kubelet keys")?;
    let webhook = LocalWebhook::start(Config::default()).await?;

    println!(
        "nodeguard demo: the webhook listens on https://{} with a CA made for this run;",
        webhook.address
    );
    println!("the client verifies it as {SERVICE_DNS_NAME}, as the API server does.");
    println!("Healthy cluster: control-plane, worker-1, worker-2, worker-3, all Ready;");
    println!("worker-1's kubelet client key is bound by its issued CSR.");

    let total = scenarios.len();
    let mut unexpected = 0;
    for scenario in scenarios {
        let already_registered = scenario.inventory.node(&scenario.node).is_some();
        let webhook_name = webhook_name(&scenario);
        let Scenario {
            key,
            title,
            inventory: cluster,
            endpoint,
            action,
            node,
            review,
            expected,
        } = scenario;
        webhook.inventory.write(|current| *current = cluster);
        let (status, body) = webhook
            .ask(endpoint, &review)
            .await
            .with_context(|| format!("scenario ({key}): the request failed"))?;
        let answer = Answer::from_review(&body)
            .with_context(|| format!("scenario ({key}): HTTP {status}, not an AdmissionReview"))?;
        let outcome = outcome_of(&answer);
        let verdict = match (answer.code, answer.reason.as_deref()) {
            (Some(code), Some(reason)) => format!("{} ({code} {reason})", outcome.as_str()),
            _ => outcome.as_str().to_string(),
        };
        let mark = if outcome == expected {
            "as expected"
        } else {
            unexpected += 1;
            "NOT AS EXPECTED"
        };
        println!("\n({key}) {title}");
        println!(
            "    request: {} -> POST {}",
            describe_request(&review),
            endpoint.path()
        );
        println!("    answer:  {verdict}, {mark}");
        println!("    kubelet log on {node}:");
        let timestamp = jiff::Zoned::now().strftime("%m%d %H:%M:%S%.6f").to_string();
        for line in kubelet_log::lines(
            action,
            webhook_name,
            &node,
            &answer,
            already_registered,
            &timestamp,
        ) {
            println!("      {line}");
        }
    }
    webhook.stop().await?;
    println!(
        "\n{total} scenarios: {} answered as expected",
        total - unexpected
    );
    if unexpected > 0 {
        anyhow::bail!("{unexpected} scenario(s) were answered otherwise than expected");
    }
    Ok(())
}
