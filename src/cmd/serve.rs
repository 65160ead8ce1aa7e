//! `nodeguard serve`: the watchers keep the inventory current, the webhook answers
//! reviews from it, the admin server reports on both, and the replica holding the
//! lease records identities in the ledger.
//!
//! The first SIGTERM or SIGINT hands the lease over and turns `/readyz` unready at once;
//! the webhook answers for `--shutdown-delay` more while moving its kept-alive clients
//! to new connections, then stops accepting and drains; the admin server stops last. A
//! second signal stops at once.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{ConfigArgs, ConfigReloader, SharedConfig};
use crate::events::{EventPoster, EventQueue};
use crate::inventory::SharedInventory;
use crate::ledger::recorder::Recorder;
use crate::ledger::refusals::{self, RefusalWriter};
use crate::metrics::Metrics;
use crate::plumbing::admin::{self, AdminArgs};
use crate::plumbing::certificate_reload::CertificateReloader;
use crate::plumbing::https::serve_tls_draining;
use crate::plumbing::kube_client::KubeArgs;
use crate::plumbing::lease::{self, LeaseConfig};
use crate::plumbing::shutdown::{Signals, Trigger, bind};
use crate::plumbing::supervise::Supervisor;
use crate::plumbing::tls::server_config_from_files;
use crate::watch::observations;
use crate::watch::{self, Readiness, Views};
use crate::webhook::{self, AppState, WebhookArgs};

/// Everything `nodeguard serve` needs, each part with its own flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub webhook: WebhookArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// After SIGTERM, how long the webhook keeps accepting and answering (closing each
    /// kept-alive connection after its next answer) before it stops accepting and
    /// drains: long enough for the API server to learn that this replica's endpoint is
    /// gone. E.g. `5s`, `1500ms`, `0` (none).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
    /// How long a watched view (Nodes, CSRs, NodeIdentities) may go without a response,
    /// an event or a bookmark before the inventory counts as not current: `/readyz`
    /// answers 503 and reviews are let through unchecked. Each watch is reopened every
    /// two thirds of it (whole seconds), so a quiet view stays current.
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = parse_duration)]
    pub stale_after: Duration,
}

/// A duration in jiff's friendly format (`5s`, `1m30s`, `1500ms`) or ISO 8601, or a
/// plain number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let duration: jiff::SignedDuration = text
        .parse()
        .map_err(|error| format!("not a duration such as 5s or 1500ms: {error}"))?;
    Duration::try_from(duration).map_err(|_| "a duration cannot be negative".to_string())
}

/// Who records the ledger: the replica holding a Lease in nodeguard's namespace.
#[derive(Debug, Clone, clap::Args)]
pub struct LedgerArgs {
    /// Namespace of the recorder's Lease (the pod's own, from the downward API).
    #[arg(
        long,
        env = "POD_NAMESPACE",
        hide_env_values = true,
        default_value = "nodeguard"
    )]
    pub namespace: String,
    /// Name of the Lease that elects the recorder.
    #[arg(long, default_value = "nodeguard-recorder")]
    pub lease_name: String,
    /// This replica's name in the Lease and in Events (the pod name).
    #[arg(long, env = "POD_NAME", hide_env_values = true)]
    pub identity: Option<String>,
}

impl LedgerArgs {
    fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "nodeguard".to_string());
            format!("{host}-{}", std::process::id())
        })
    }
}

/// Runs until a signal, or until a part fails.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let source = args.config.source();
    let loaded = source.load()?;
    tracing::info!(
        mode = loaded.config.global_mode().as_str(),
        checks = %loaded.config.describe(),
        heartbeat_timeout = %loaded.config.describe_heartbeat_timeout(),
        "check modes"
    );
    let config = SharedConfig::loaded(loaded.clone());
    let (tls, serving_certificate) =
        server_config_from_files(&args.webhook.tls_cert, &args.webhook.tls_key)?;
    let client = args.kube.client().await?;

    let webhook_listener = bind(args.webhook.listen, "webhook").await?;
    let admin_listener = bind(args.admin.admin_listen, "admin").await?;
    tracing::info!(
        webhook = %args.webhook.listen,
        admin = %args.admin.admin_listen,
        "listening"
    );

    let inventory = SharedInventory::default();
    let views = Views::new(args.stale_after);
    let readiness = Readiness::new().with_views(views.clone());
    let metrics = Arc::new(Metrics::new());
    let mut tasks = Supervisor::new(metrics.tasks.clone());
    tasks.restartable(READINESS_REPORTER, {
        let readiness = readiness.clone();
        move || watch::readiness::report_changes(readiness.clone(), Duration::from_secs(5))
    });
    // Puts each valid new configuration file in force; keeps the last good one.
    tasks.restartable(CONFIG_RELOADER, {
        let (config, metrics) = (config.clone(), metrics.config.clone());
        move || {
            ConfigReloader::new(
                source.clone(),
                &config.in_force(),
                config.clone(),
                metrics.clone(),
            )
            .run()
        }
    });
    // Puts each valid rotated pair in place for new handshakes; sets the expiry gauge.
    tasks.restartable(CERTIFICATE_RELOADER, {
        let (cert, key, metrics) = (
            args.webhook.tls_cert.clone(),
            args.webhook.tls_key.clone(),
            metrics.certificate.clone(),
        );
        move || {
            CertificateReloader::new(
                cert.clone(),
                key.clone(),
                Arc::clone(&serving_certificate),
                metrics.clone(),
            )
            .run()
        }
    });
    // The first signal; then the webhook server's end, after which the admin server,
    // which kubelet probes until the end, stops too.
    let drain = Trigger::new();
    let webhook_stopped = Trigger::new();
    let mut signals = Signals::new()?;

    let identity = args.ledger.identity();
    // Refusals and warnings become Events after their answers, from a bounded queue.
    let (event_queue, notices) = EventQueue::new(metrics.events.clone());
    let poster = EventPoster::new(client.clone(), &identity, metrics.events.clone());
    tasks.essential(EVENT_POSTER, async move {
        poster.run(notices).await;
        Ok(())
    });
    // Machines refused for a node's name, recorded in its NodeIdentity by this replica.
    let (refusal_queue, refused) = refusals::queue(metrics.ledger.clone());
    let refusal_writer =
        RefusalWriter::new(client.clone(), inventory.clone(), metrics.ledger.clone());
    tasks.essential(REFUSAL_WRITER, async move {
        refusal_writer.run(refused).await;
        Ok(())
    });
    let (observations, observed) = observations::observations();
    let (leading, leadership) = lease::leadership_channel();
    tasks.essential(
        WATCHERS,
        watch::run(
            views.wrap(client.clone()),
            inventory.clone(),
            readiness.clone(),
            Some(observations),
        ),
    );
    let recorder = Recorder::new(
        client.clone(),
        inventory.clone(),
        metrics.ledger.clone(),
        metrics.events.clone(),
        &identity,
    )
    .after_sync(readiness.clone())
    .auditing(config.clone());
    tasks.essential(RECORDER, async move {
        recorder.run(observed, leadership).await;
        Ok(())
    });
    let lease_config = LeaseConfig::new(
        args.ledger.namespace.clone(),
        args.ledger.lease_name.clone(),
        identity,
    );
    tasks.essential(
        ELECTION,
        lease::run_election(client, lease_config, leading, drain.signaled()),
    );
    let webhook_router = webhook::router(AppState {
        inventory: inventory.clone(),
        config,
        metrics: metrics.admission.clone(),
        events: Some(event_queue),
        readiness: Some(readiness.clone()),
        refusals: Some(refusal_queue),
    });
    tasks.essential(
        WEBHOOK_SERVER,
        serve_tls_draining(
            webhook_listener,
            tls,
            webhook_router,
            drain.signaled(),
            args.shutdown_delay,
        ),
    );
    let admin_router = admin::router(metrics.admin_state(inventory, readiness.clone()));
    tasks.essential(
        ADMIN_SERVER,
        admin::serve(admin_listener, admin_router, webhook_stopped.signaled()),
    );

    let failure = tasks
        .watch(async {
            signals.next().await;
            tracing::info!("signal received: shutting down (a second signal stops at once)");
        })
        .await
        .err();
    readiness.shut_down();
    tracing::info!("/readyz now answers 503, so that the Service stops routing here");
    // The webhook starts its drain delay; the election releases the lease at once, so
    // another replica records while this one still answers.
    drain.start();
    if let Some(recording) = tasks.take(RECORDER) {
        recording.abort();
    }
    let stopping = async {
        // A task that already stopped has nothing more to report: its failure, if it
        // mattered, is the one being returned.
        finish(tasks.take(WEBHOOK_SERVER)).await;
        // The watchers keep the inventory current for as long as the webhook answers.
        if let Some(watchers) = tasks.take(WATCHERS) {
            watchers.abort();
        }
        tasks.abort_restartable();
        // Its queue's last sender went with the webhook: it writes its series and ends.
        finish(tasks.take(EVENT_POSTER)).await;
        finish(tasks.take(REFUSAL_WRITER)).await;
        webhook_stopped.start();
        finish(tasks.take(ADMIN_SERVER)).await;
        finish(tasks.take(ELECTION)).await;
    };
    tokio::select! {
        () = stopping => tracing::info!("stopped"),
        () = signals.next() => tracing::warn!("second signal: stopping without finishing the drain"),
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

// The supervised tasks, by the names their logs and metrics give them.
const WATCHERS: &str = "the cluster watchers";
const RECORDER: &str = "the recorder";
const ELECTION: &str = "the recorder's Lease election";
const EVENT_POSTER: &str = "the Event poster";
const REFUSAL_WRITER: &str = "the refused machines' writer";
const WEBHOOK_SERVER: &str = "the webhook server";
const ADMIN_SERVER: &str = "the admin server";
const CERTIFICATE_RELOADER: &str = "certificate-reloader";
const CONFIG_RELOADER: &str = "config-reloader";
const READINESS_REPORTER: &str = "readiness-reporter";

/// Waits for `task` to end, unless it already has (or is not there: it ended the run).
async fn finish<T>(task: Option<tokio::task::JoinHandle<T>>) {
    if let Some(task) = task {
        let _ = task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{CheckId, Mode};

    #[test]
    fn check_flags_apply_on_top_of_the_config_file() {
        let dir = std::env::temp_dir().join(format!("nodeguard-serve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.yaml");
        std::fs::write(&file, "checks:\n  hostname: warn\n  provider-id: off\n").unwrap();
        let args = ConfigArgs {
            config_file: Some(file),
            checks: vec!["provider-id=enforce".into(), "internal-ip=warn".into()],
            heartbeat_timeout: Some("15m".into()),
        };
        let config = args.load().unwrap();
        assert_eq!(
            config.heartbeat_timeout(),
            jiff::SignedDuration::from_mins(15)
        );
        assert_eq!(config.mode(CheckId::Hostname), Mode::Warn);
        assert_eq!(config.mode(CheckId::ProviderId), Mode::Enforce);
        assert_eq!(config.mode(CheckId::InternalIp), Mode::Warn);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_shutdown_delay_reads_as_a_duration_or_seconds() {
        for (text, expected) in [
            ("5s", Duration::from_secs(5)),
            ("1500ms", Duration::from_millis(1500)),
            ("1m30s", Duration::from_secs(90)),
            ("7", Duration::from_secs(7)),
            ("0", Duration::ZERO),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn a_bad_check_flag_names_itself() {
        let args = ConfigArgs {
            config_file: None,
            checks: vec!["hostname=loud".into()],
            heartbeat_timeout: None,
        };
        let error = format!("{:#}", args.load().unwrap_err());
        assert_eq!(
            error,
            "--check hostname=loud: unknown mode \"loud\"; use enforce, warn or off"
        );
    }

    #[tokio::test]
    async fn the_wildcard_listens_on_ipv6_and_ipv4_both() {
        let listener = bind("[::]:0".parse().unwrap(), "test").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepting = tokio::spawn(async move {
            for _ in 0..2 {
                let _ = listener.accept().await.unwrap();
            }
        });
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("IPv4 loopback");
        if std::net::TcpListener::bind("[::1]:0").is_ok() {
            tokio::net::TcpStream::connect(("::1", port))
                .await
                .expect("IPv6 loopback");
        } else {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
        }
        accepting.await.unwrap();
    }
}
